//! The document the benchmark writes: a 2 KiB ChatGPT-mode auth.json with realistic fake JWTs
//! (base64url header, payload, signature), in two versions of equal size.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use codex_store::{AuthDotJson, AuthMode, Secret, Timestamp, TokenData};

/// The size of the auth.json the benchmark writes (a real ChatGPT-mode file is about this).
pub const FILE_SIZE: usize = 2048;

/// A deterministic byte stream (xorshift), so that every process builds the same documents.
struct Rng(u64);

impl Rng {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 32) as u8
            })
            .collect()
    }

    fn hex(&mut self, n: usize) -> String {
        self.bytes(n).iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn jwt(payload: &str, signature: &[u8]) -> String {
    let header = r#"{"alg":"RS256","typ":"JWT"}"#;
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// Two versions of one account's auth.json (a refresh apart), of exactly the same size.
pub struct Docs {
    /// The two versions.
    pub docs: [AuthDotJson; 2],
    /// Their bytes on disk.
    pub bytes: [Vec<u8>; 2],
}

impl Docs {
    pub fn new() -> Docs {
        // Find the signature length that makes the file FILE_SIZE bytes.
        let probe = Self::version(0, 0);
        let short = probe.to_json().len();
        assert!(
            short < FILE_SIZE,
            "the document without signatures is too large"
        );
        // Two signatures, each base64 (4 characters per 3 bytes); search nearby lengths.
        let mut sig = (FILE_SIZE - short) * 3 / 8;
        while Self::version(0, sig).to_json().len() > FILE_SIZE {
            sig -= 1;
        }
        while Self::version(0, sig + 1).to_json().len() <= FILE_SIZE {
            sig += 1;
        }
        let docs = [Self::version(0, sig), Self::version(1, sig)];
        let bytes = [docs[0].to_json(), docs[1].to_json()];
        assert_eq!(
            bytes[0].len(),
            bytes[1].len(),
            "the versions differ in size"
        );
        assert_ne!(bytes[0], bytes[1], "the versions are equal");
        for b in &bytes {
            let back = AuthDotJson::from_json(b).expect("the document does not load");
            assert_eq!(back.to_json(), *b, "the document does not round-trip");
        }
        Docs { docs, bytes }
    }

    fn version(v: u64, sig: usize) -> AuthDotJson {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let account = "2f0c9a7e-5b1d-4c8e-9f3a-6d2b1e0c7a54";
        let user = "user-Xq3bV9kLm2Tz8RwYp4NcJd6H";
        let iat = 1_760_000_000 + v * 864_000;
        let id_payload = format!(
            r#"{{"aud":["app_EMoamEEZ73f0CkXaXp7hrann"],"email":"ada.lovelace@example.com","email_verified":true,"exp":{exp},"https://api.openai.com/auth":{{"chatgpt_account_id":"{account}","chatgpt_plan_type":"plus","chatgpt_user_id":"{user}","user_id":"{user}"}},"iat":{iat},"iss":"https://auth.openai.com","jti":"{jti}","sid":"{sid}","sub":"google-oauth2|108374652910384756201"}}"#,
            exp = iat + 3600,
            jti = rng.hex(16),
            sid = rng.hex(16),
        );
        let id_sig = rng.bytes(sig);
        let access_payload = format!(
            r#"{{"aud":["https://api.openai.com/v1"],"client_id":"app_EMoamEEZ73f0CkXaXp7hrann","exp":{exp},"https://api.openai.com/auth":{{"chatgpt_account_id":"{account}","chatgpt_plan_type":"plus","chatgpt_user_id":"{user}","user_id":"{user}"}},"https://api.openai.com/profile":{{"email":"ada.lovelace@example.com","email_verified":true}},"iat":{iat},"iss":"https://auth.openai.com","jti":"{jti}","scp":["openid","profile","email","offline_access"],"session_id":"authsess_{sess}","sub":"google-oauth2|108374652910384756201"}}"#,
            exp = iat + 864_000,
            jti = Rng(0x2545_F491_4F6C_DD1D ^ (v + 1)).hex(16),
            sess = rng.hex(12),
        );
        let access_sig = Rng(0x5851_F42D_4C95_7F2D ^ (v + 7)).bytes(sig);
        AuthDotJson {
            auth_mode: Some(AuthMode::Chatgpt),
            openai_api_key: None,
            tokens: Some(TokenData {
                id_token: Secret::new(jwt(&id_payload, &id_sig)),
                access_token: Secret::new(jwt(&access_payload, &access_sig)),
                refresh_token: Secret::new(format!(
                    "rt_{}",
                    Rng(0x1405_7B7E_F767_814F ^ (v + 3)).hex(24)
                )),
                account_id: Some(account.to_owned()),
                ..Default::default()
            }),
            last_refresh: Some(
                Timestamp::parse(&format!("2025-10-{:02}T08:15:42.123456Z", 10 + v))
                    .expect("timestamp"),
            ),
            ..Default::default()
        }
    }
}
