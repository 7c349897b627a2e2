//! The agent's alarm: a wait until a moment of the boot-time clock ([`BootInstant`]), which
//! counts the time a suspended machine slept.
//!
//! tokio's timer runs on the monotonic clock, which stops while a machine is suspended (Linux's
//! `CLOCK_MONOTONIC`, macOS's uptime): a sleep of 10 minutes begun before an hour of suspend
//! ends 10 minutes after the resume, long after the due time it waited for, while every Codex
//! process on the machine finds its token due at once. The alarm fires at the resume instead:
//!
//! - on Linux, through a timerfd on `CLOCK_BOOTTIME` armed at the deadline itself and read
//!   through tokio's reactor: the kernel fires it at the deadline, or at the resume when the
//!   deadline passed during a suspend, and wakes the process at no other time;
//! - elsewhere, and on Linux when no timerfd can be made (a sandbox without it), through tokio's
//!   timer in slices of at most [`SLICE`], each ending with a look at the boot-time clock: a
//!   deadline passed during a suspend fires at most one slice after the resume.
//!
//! The clock is a parameter ([`BootClock`]): a test moves it forward by an hour of suspend while
//! tokio's paused time moves by a second.

use std::sync::Arc;
use std::time::Duration;

use crate::boottime::BootInstant;

/// The longest sleep on tokio's timer between two looks at the boot-time clock, where no kernel
/// timer on that clock is at hand: how late a deadline that passed during a suspend fires at
/// most, after the resume.
///
/// Each slice costs a wake-up of the idle agent: 30 s costs 120 an hour (microseconds of CPU
/// each) and bounds the lateness at half a minute, where the monotonic timer alone was late by
/// up to [`MAX_SLEEP`](super::schedule::MAX_SLEEP) (10 minutes). A Codex process refreshes only
/// within 5 minutes of expiry and the agent's lead is more (15 minutes by default), so half a
/// minute keeps the agent ahead of them after most suspends; a shorter slice would multiply
/// the wake-ups for little: a Codex process that is busy at the very resume may refresh first
/// whatever the slice (the guarded protocol keeps that race harmless, only not free).
pub(crate) const SLICE: Duration = Duration::from_secs(30);

/// A clock that counts the time a suspended machine slept: the system's ([`BootInstant::now`]),
/// or a test's.
pub(crate) trait BootClock: Send + Sync {
    /// Now, on this clock.
    fn now(&self) -> BootInstant;
}

/// The system's boot-time clock.
struct SystemClock;

impl BootClock for SystemClock {
    fn now(&self) -> BootInstant {
        BootInstant::now()
    }
}

/// Waits until a moment of its [`BootClock`]; one per waiting task, reused for each wait (on
/// Linux it holds one timerfd, moved to each new deadline).
pub(crate) struct Alarm {
    clock: Arc<dyn BootClock>,
    /// The kernel's timer on the same clock; `None`: slices of tokio's timer.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    kernel: Option<kernel::KernelTimer>,
}

impl std::fmt::Debug for Alarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let kernel = self.kernel.is_some();
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let kernel = false;
        f.debug_struct("Alarm").field("kernel", &kernel).finish()
    }
}

impl Alarm {
    /// An alarm on the system's boot-time clock: a timerfd on `CLOCK_BOOTTIME` where the
    /// kernel has one, slices of tokio's timer elsewhere.
    ///
    /// # Panics
    /// Outside a tokio runtime, or on Linux in one without its I/O driver (`enable_io`, which
    /// every request of the agent needs as well).
    pub(crate) fn system() -> Alarm {
        Alarm {
            clock: Arc::new(SystemClock),
            #[cfg(any(target_os = "linux", target_os = "android"))]
            kernel: match kernel::KernelTimer::new() {
                Ok(timer) => Some(timer),
                Err(e) => {
                    tracing::debug!(
                        error = %e,
                        "no timerfd on CLOCK_BOOTTIME: the alarm looks at the clock every {} s",
                        SLICE.as_secs()
                    );
                    None
                }
            },
        }
    }

    /// An alarm on `clock`, in slices of tokio's timer ([`SLICE`]).
    #[cfg(test)]
    pub(crate) fn sliced(clock: Arc<dyn BootClock>) -> Alarm {
        Alarm {
            clock,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            kernel: None,
        }
    }

    /// Now, on the alarm's clock.
    pub(crate) fn now(&self) -> BootInstant {
        self.clock.now()
    }

    /// Resolves once the alarm's clock reaches `deadline`: at once when it has, at the resume
    /// when the deadline passed while the machine was suspended (at most a [`SLICE`] later
    /// without a kernel timer). Cancel-safe: dropping the wait leaves nothing to undo.
    pub(crate) async fn until(&mut self, deadline: BootInstant) {
        if self.clock.now() >= deadline {
            return;
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(timer) = &mut self.kernel {
            match timer.until(deadline).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "the timer on CLOCK_BOOTTIME failed: looking at the clock every {} s \
                         instead",
                        SLICE.as_secs()
                    );
                    self.kernel = None;
                }
            }
        }
        loop {
            let left = deadline.saturating_since(self.clock.now());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(SLICE)).await;
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod kernel {
    //! A timerfd on `CLOCK_BOOTTIME`, read through tokio's reactor.

    use std::io;

    use rustix::fd::OwnedFd;
    use rustix::time::{
        timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags,
        TimerfdTimerFlags, Timespec,
    };
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    use crate::boottime::BootInstant;

    pub(super) struct KernelTimer {
        fd: AsyncFd<OwnedFd>,
        /// The deadline the timer is armed at and has not been read to have reached.
        armed: Option<BootInstant>,
    }

    impl KernelTimer {
        pub(super) fn new() -> io::Result<KernelTimer> {
            let fd = timerfd_create(
                TimerfdClockId::Boottime,
                TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
            )?;
            // tokio 1.54 deprecates this safe constructor for its `unsafe` successor
            // (`register_with_interest`): for a generic `T`, nothing keeps the descriptor open
            // and the same while it is registered. Here it is an `OwnedFd` the `AsyncFd` owns
            // and nobody closes or replaces, which is the successor's whole condition; this
            // crate forbids `unsafe`, so the safe constructor it is.
            #[allow(deprecated)]
            let fd = AsyncFd::with_interest(fd, Interest::READABLE)?;
            Ok(KernelTimer { fd, armed: None })
        }

        /// Resolves when `CLOCK_BOOTTIME` reaches `deadline`, which must be ahead of it when
        /// called (an expiry of zero would disarm the timer).
        pub(super) async fn until(&mut self, deadline: BootInstant) -> io::Result<()> {
            if self.armed != Some(deadline) {
                let expiry = Timespec::try_from(deadline.since_origin())
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                // Setting the timer also clears an expiry not read yet, of an earlier deadline
                // whose wait was dropped.
                timerfd_settime(
                    self.fd.get_ref(),
                    TimerfdTimerFlags::ABSTIME,
                    &Itimerspec {
                        it_interval: Timespec {
                            tv_sec: 0,
                            tv_nsec: 0,
                        },
                        it_value: expiry,
                    },
                )?;
                self.armed = Some(deadline);
            }
            loop {
                let mut ready = self.fd.readable().await?;
                let mut expiries = [0u8; 8];
                // An expiry is readable once the clock has reached the deadline; a readiness
                // left over from an earlier deadline reads nothing and is cleared.
                match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut expiries)?)) {
                    Ok(Ok(_)) => {
                        // A one-shot timer: disarmed now.
                        self.armed = None;
                        return Ok(());
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::super::schedule::MAX_SLEEP;
    use super::*;

    /// The boot-time clock of a laptop whose suspends the test decides: tokio's (paused) time
    /// since the test began plus the time spent suspended. It counts how often it is read.
    struct Laptop {
        origin: tokio::time::Instant,
        suspended: Mutex<Duration>,
        reads: AtomicUsize,
    }

    impl Laptop {
        fn new() -> Arc<Laptop> {
            Arc::new(Laptop {
                origin: tokio::time::Instant::now(),
                suspended: Mutex::new(Duration::ZERO),
                reads: AtomicUsize::new(0),
            })
        }

        /// The lid closes for `d`: the boot-time clock moves on by `d`, tokio's does not.
        fn suspend(&self, d: Duration) {
            *self.suspended.lock().unwrap() += d;
        }
    }

    impl BootClock for Laptop {
        fn now(&self) -> BootInstant {
            self.reads.fetch_add(1, Ordering::Relaxed);
            let suspended = *self.suspended.lock().unwrap();
            BootInstant::from_origin(Duration::from_secs(1_000) + self.origin.elapsed() + suspended)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_due_time_passed_during_a_suspend_fires_at_the_resume_not_up_to_ten_minutes_later() {
        let laptop = Laptop::new();
        let mut alarm = Alarm::sliced(laptop.clone());
        let due = alarm.now().after(MAX_SLEEP);
        // How the agent waited before: tokio's timer, for the same 10 minutes.
        let monotonic = tokio::spawn(tokio::time::sleep(MAX_SLEEP));
        let wait = alarm.until(due);
        tokio::pin!(wait);

        let awake = Duration::from_secs(60);
        assert!(
            tokio::time::timeout(awake, &mut wait).await.is_err(),
            "the alarm fired 9 minutes before its due time"
        );
        // An hour asleep; the resume takes a second of tokio's time.
        laptop.suspend(Duration::from_secs(3600));
        tokio::time::advance(Duration::from_secs(1)).await;
        let resumed = tokio::time::Instant::now();

        tokio::time::timeout(SLICE, &mut wait)
            .await
            .expect("a due time passed during the suspend fires within a slice of the resume");
        let late = resumed.elapsed();
        assert!(
            late <= SLICE,
            "fired {late:?} after the resume (a slice is {SLICE:?})"
        );
        assert!(
            laptop.now() >= due,
            "fired before its due time on the boot-time clock"
        );
        // tokio's timer alone sleeps on for minutes after the resume.
        assert!(
            !monotonic.is_finished(),
            "tokio's timer counted the suspend"
        );
        tokio::time::sleep(Duration::from_secs(7 * 60)).await;
        assert!(
            !monotonic.is_finished(),
            "tokio's timer counted the suspend"
        );
        monotonic.await.expect("the monotonic sleep");
        assert!(
            resumed.elapsed() >= MAX_SLEEP - awake - Duration::from_secs(1),
            "tokio's timer fired {:?} after the resume",
            resumed.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_suspend_the_alarm_fires_at_its_deadline() {
        let laptop = Laptop::new();
        let mut alarm = Alarm::sliced(laptop.clone());
        let started = tokio::time::Instant::now();
        // Not a whole number of slices: the last one is shorter.
        let due = alarm.now().after(Duration::from_secs(95));
        alarm.until(due).await;
        let waited = started.elapsed();
        assert!(
            laptop.now() >= due,
            "fired before its deadline, after {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(95) + Duration::from_millis(10),
            "fired {waited:?} after a wait of 95 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_of_ten_minutes_looks_at_the_clock_once_a_slice() {
        let laptop = Laptop::new();
        let mut alarm = Alarm::sliced(laptop.clone());
        let due = alarm.now().after(MAX_SLEEP);
        let before = laptop.reads.load(Ordering::Relaxed);
        alarm.until(due).await;
        let looks = laptop.reads.load(Ordering::Relaxed) - before;
        // One look when the wait begins, one after each slice.
        let slices = (MAX_SLEEP.as_secs()).div_ceil(SLICE.as_secs()) as usize;
        assert!(
            looks <= slices + 2,
            "{looks} looks at the clock for {slices} slices: each look is a wake-up"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_already_passed_fires_at_once() {
        let laptop = Laptop::new();
        let mut alarm = Alarm::sliced(laptop.clone());
        let past = alarm.now();
        laptop.suspend(Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        alarm.until(past).await;
        alarm.until(alarm.now()).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    /// The kernel's timer, on the real clock (a suspend cannot be simulated here: the kernel
    /// fires a `CLOCK_BOOTTIME` timer that expired during one at the resume).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[tokio::test]
    async fn the_kernel_timer_fires_at_its_deadline_and_follows_each_new_one() {
        let limit = Duration::from_secs(10);
        let mut alarm = Alarm::system();
        assert!(
            alarm.kernel.is_some(),
            "no timerfd on CLOCK_BOOTTIME: the agent would fall back to slices"
        );
        let due = alarm.now().after(Duration::from_millis(50));
        tokio::time::timeout(limit, alarm.until(due))
            .await
            .expect("the timer did not fire");
        assert!(BootInstant::now() >= due, "fired before its deadline");

        // A wait dropped before its deadline, whose expiry then passes unread, does not end the
        // next wait early.
        let dropped = alarm.now().after(Duration::from_millis(10));
        tokio::select! {
            () = alarm.until(dropped) => panic!("a wait of 10 ms ended before one of 1 ms"),
            () = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
        std::thread::sleep(Duration::from_millis(30));
        let later = alarm.now().after(Duration::from_millis(100));
        tokio::time::timeout(limit, alarm.until(later))
            .await
            .expect("the timer did not fire at its new deadline");
        assert!(
            BootInstant::now() >= later,
            "the expiry of a dropped wait ended the next one early"
        );

        // After an expiry read, the same deadline is past, and a new one arms the timer again.
        tokio::time::timeout(Duration::from_millis(1), alarm.until(later))
            .await
            .expect("a deadline passed fires at once");
        let next = alarm.now().after(Duration::from_millis(20));
        tokio::time::timeout(limit, alarm.until(next))
            .await
            .expect("the timer did not fire after an earlier expiry was read");
        assert!(BootInstant::now() >= next, "fired before its deadline");
    }
}
