//! Files and folders batchlens creates hold tenants' images and results: on Unix they are
//! owner-only (folders 0700, files 0600), whatever the umask.

use std::io;
use std::path::Path;

#[cfg(unix)]
const DIR_MODE: u32 = 0o700;
#[cfg(unix)]
const FILE_MODE: u32 = 0o600;

/// Sets `path` to `mode` exactly (the umask may have taken bits from it).
#[cfg(unix)]
fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Creates the folder and any missing parents, each created one owner-only.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    match builder.create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    #[cfg(unix)]
    chmod(path, DIR_MODE)?;
    Ok(())
}

/// Makes an existing folder owner-only (the data directory of an older install).
pub fn restrict_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    chmod(path, DIR_MODE)?;
    let _ = path;
    Ok(())
}

/// Makes an existing file owner-only; a missing one is no error.
pub fn restrict_file(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    match chmod(path, FILE_MODE) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        other => other?,
    }
    let _ = path;
    Ok(())
}

/// Creates (or truncates) a file for writing, owner-only.
pub async fn create_file(path: &Path) -> io::Result<tokio::fs::File> {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(FILE_MODE);
    let file = options.open(path).await?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
            .await?;
    }
    Ok(file)
}

/// [`create_dir_all`] off the async threads.
pub async fn create_dir_all_async(path: &Path) -> io::Result<()> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || create_dir_all(&path))
        .await
        .map_err(io::Error::other)?
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn folders_and_files_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        for p in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&dir.path().join(p)), 0o700, "{p}");
        }
        let file = deep.join("x.jsonl");
        drop(create_file(&file).await.unwrap());
        assert_eq!(mode(&file), 0o600);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        restrict_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        restrict_file(&deep.join("missing")).unwrap();
    }
}
