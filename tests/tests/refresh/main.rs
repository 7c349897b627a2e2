//! Guarded refresh in one process against the fake token endpoint: errors, modes, the protocol,
//! rotation, untrusted answers and robustness.

mod behaviour_errors;
mod behaviour_modes;
mod behaviour_protocol;
mod broker;
mod robustness;
mod rotation;
mod token_url;
mod untrusted_answers;
