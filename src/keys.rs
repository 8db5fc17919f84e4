//! `batchlens keys create|list|revoke`: API keys at run time. Talks to the database the
//! server uses (`DATABASE_URL` / the config), not to the server: a key is stored as its
//! SHA-256 with a short display prefix, printed once, and every replica accepts it (or,
//! revoked, refuses it) within `auth.key_cache_secs`.

use rand::RngCore;

use crate::api::auth::sha256_hex;
use crate::config::Settings;
use crate::store::{self, StoreError};

/// Keys start with this; the display prefix is it and the next 8 characters.
pub const KEY_PREFIX: &str = "bl_";
const PREFIX_LEN: usize = KEY_PREFIX.len() + 8;

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key for a tenant; prints the key (once: only its SHA-256 is kept).
    Create {
        /// The tenant the key acts for.
        #[arg(long)]
        tenant: String,
    },
    /// List the stored keys: prefix, tenant, created, revoked.
    List,
    /// Revoke the key with this prefix (as `keys list` shows it).
    Revoke {
        /// The key's display prefix, e.g. bl_1a2b3c4d.
        prefix: String,
    },
}

/// A new random key (256 bits) and its display prefix.
pub fn generate() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let key = format!("{KEY_PREFIX}{}", hex::encode(bytes));
    let prefix = key[..PREFIX_LEN].to_string();
    (key, prefix)
}

/// A tenant name: 1 to 64 letters, digits, '.', '_' or '-'.
pub fn check_tenant(tenant: &str) -> Result<(), String> {
    let ok = !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--tenant {tenant:?}: must be 1 to 64 letters, digits, '.', '_' or '-'"
        ))
    }
}

/// Runs one `keys` command; the process exit code (0 done, 1 failed, 2 bad config or usage).
pub async fn run(command: KeysCommand) -> i32 {
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("batchlens: {err}");
            return 2;
        }
    };
    if let KeysCommand::Create { tenant } = &command {
        if let Err(why) = check_tenant(tenant) {
            eprintln!("batchlens: {why}");
            return 2;
        }
    }
    match execute(&settings, command).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("batchlens: {err}");
            1
        }
    }
}

async fn execute(settings: &Settings, command: KeysCommand) -> Result<i32, StoreError> {
    crate::startup::prepare_data_dir(settings)
        .map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
    let store = store::connect(settings.database_url()).await?;
    let code = match command {
        KeysCommand::Create { tenant } => {
            let mut attempt = 0;
            loop {
                let (key, prefix) = generate();
                match store
                    .insert_api_key(&sha256_hex(&key), &prefix, &tenant)
                    .await
                {
                    Ok(()) => {
                        println!("{key}");
                        eprintln!(
                            "created key {prefix}… for tenant {tenant}: shown once, only its \
                             SHA-256 is stored; every replica accepts it within {} s",
                            settings.auth.key_cache_secs
                        );
                        break 0;
                    }
                    // Two keys with the same 32-bit prefix: draw another.
                    Err(StoreError::Conflict(_)) if attempt < 3 => attempt += 1,
                    Err(err) => return Err(err),
                }
            }
        }
        KeysCommand::List => {
            let keys = store.list_api_keys().await?;
            println!(
                "{:<12} {:<24} {:<25} REVOKED",
                "PREFIX", "TENANT", "CREATED"
            );
            for k in keys {
                let revoked = k
                    .revoked_at
                    .map_or_else(|| "-".to_string(), |t| t.to_rfc3339());
                println!(
                    "{:<12} {:<24} {:<25} {revoked}",
                    k.prefix,
                    k.tenant,
                    k.created_at.to_rfc3339()
                );
            }
            0
        }
        KeysCommand::Revoke { prefix } => {
            if store.revoke_api_key(&prefix).await? {
                eprintln!(
                    "revoked {prefix}: every replica refuses it within {} s",
                    settings.auth.key_cache_secs
                );
                0
            } else {
                eprintln!("batchlens: no key with prefix {prefix:?} that is not revoked");
                1
            }
        }
    };
    store.close().await;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_named_by_their_prefix() {
        let (a, pa) = generate();
        let (b, _) = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), KEY_PREFIX.len() + 64);
        assert!(a.starts_with(&pa) && pa.len() == 11, "{a} {pa}");
        assert!(check_tenant("acme-1.eu").is_ok());
        assert!(check_tenant("").is_err());
        assert!(check_tenant("a b").is_err());
    }
}
