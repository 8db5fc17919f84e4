//! Finding the images: walks folders (sorted, so a run is repeatable), keeps files whose
//! first bytes are PNG, JPEG, WEBP or GIF, and names them: `custom_id` from the path
//! relative to the folder given (without extension, `:` between folders), `post_id` from
//! the first sub-folder under it. Files named on the command line are named by their file
//! name, with no post.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::CliError;

/// One image to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    pub path: PathBuf,
    /// The multipart filename: the relative path, `/`-separated (`p7/look3.jpg`).
    pub filename: String,
    pub custom_id: String,
    pub post_id: Option<String>,
    pub mime: &'static str,
    pub bytes: u64,
}

/// The images found and how many other files were skipped.
#[derive(Debug, Default)]
pub struct Found {
    pub images: Vec<ImageFile>,
    pub skipped: usize,
}

/// The image type by its magic bytes (the service's own rule for uploads).
pub use crate::intake::upload::magic_mime as sniff;

fn sniff_file(path: &Path) -> std::io::Result<Option<&'static str>> {
    let mut head = [0u8; 12];
    let mut file = std::fs::File::open(path)?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(sniff(&head[..filled]))
}

/// Walks every path given: folders recursively, files as they are.
pub fn find_images(paths: &[PathBuf]) -> Result<Found, CliError> {
    let mut found = Found::default();
    let mut names = Names::default();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| CliError::io(path.display(), e))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            collect(path, &mut Vec::new(), &mut files)?;
            for (file, rel) in files {
                let post_id = (rel.len() > 1).then(|| rel[0].clone());
                found.add(file, &rel, post_id, &mut names)?;
            }
        } else {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string());
            found.add(path.clone(), &[name], None, &mut names)?;
        }
    }
    Ok(found)
}

impl Found {
    fn add(
        &mut self,
        path: PathBuf,
        rel: &[String],
        post_id: Option<String>,
        names: &mut Names,
    ) -> Result<(), CliError> {
        let Some(mime) = sniff_file(&path).map_err(|e| CliError::io(path.display(), e))? else {
            self.skipped += 1;
            return Ok(());
        };
        let bytes = std::fs::metadata(&path)
            .map_err(|e| CliError::io(path.display(), e))?
            .len();
        let filename = rel.join("/");
        let stem = match filename.rfind('.') {
            Some(dot) if dot > filename.rfind('/').map_or(0, |s| s + 1) => &filename[..dot],
            _ => filename.as_str(),
        };
        let custom_id = names.unique_id(&id_for(stem));
        let filename = names.unique_file(&filename);
        self.images.push(ImageFile {
            path,
            filename,
            custom_id,
            post_id,
            mime,
            bytes,
        });
        Ok(())
    }
}

/// A relative path (without extension) as a custom_id, in the characters the service takes
/// (`A-Z a-z 0-9 _ . : -`): folders joined by `:` (`p7/look3` → `p7:look3`), anything else
/// `_`: what the service derives from a multipart filename too.
pub use crate::intake::upload::custom_id_from_path as id_for;

/// Ids and filenames already given, so two `look.jpg` named on the command line (or
/// `look.jpg` beside `look.png`) stay apart: the second becomes `look-2`.
#[derive(Default)]
struct Names {
    ids: HashSet<String>,
    files: HashSet<String>,
}

impl Names {
    fn unique_id(&mut self, stem: &str) -> String {
        let id = dedupe(&self.ids, stem, "");
        self.ids.insert(id.clone());
        id
    }

    fn unique_file(&mut self, filename: &str) -> String {
        let (stem, ext) = match filename.rfind('.') {
            Some(dot) => filename.split_at(dot),
            None => (filename, ""),
        };
        let name = dedupe(&self.files, stem, ext);
        self.files.insert(name.clone());
        name
    }
}

fn dedupe(taken: &HashSet<String>, stem: &str, ext: &str) -> String {
    let first = format!("{stem}{ext}");
    if !taken.contains(&first) {
        return first;
    }
    (2..)
        .map(|n| format!("{stem}-{n}{ext}"))
        .find(|c| !taken.contains(c))
        .expect("some suffix is free")
}

/// Every regular file under `dir`, sorted by relative path; symlinked folders are not
/// followed (no cycles).
fn collect(
    dir: &Path,
    rel: &mut Vec<String>,
    out: &mut Vec<(PathBuf, Vec<String>)>,
) -> Result<(), CliError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| CliError::io(dir.display(), e))?
        .collect::<Result<_, _>>()
        .map_err(|e| CliError::io(dir.display(), e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry
            .file_type()
            .map_err(|e| CliError::io(entry.path().display(), e))?;
        rel.push(name);
        if kind.is_dir() {
            collect(&entry.path(), rel, out)?;
        } else if kind.is_file() || (kind.is_symlink() && entry.path().is_file()) {
            out.push((entry.path(), rel.clone()));
        }
        rel.pop();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    const JPEG: &[u8] = &[0xff, 0xd8, 0xff, 0xe0, 0, 0x10, b'J', b'F', b'I', b'F'];

    fn write(root: &Path, rel: &str, bytes: &[u8]) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn sniffs_the_four_formats_by_their_bytes() {
        assert_eq!(sniff(PNG), Some("image/png"));
        assert_eq!(sniff(JPEG), Some("image/jpeg"));
        assert_eq!(sniff(b"GIF89a\x01\x00"), Some("image/gif"));
        assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"RIFF\x10\0\0\0WAVEfmt "), None);
        assert_eq!(sniff(b"%PDF-1.4"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn ids_come_from_sub_folders_and_relative_paths_and_non_images_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "cover.png", PNG);
        write(root, "p1/look1.jpg", JPEG);
        write(root, "p1/look2.JPG", JPEG);
        write(root, "p1/notes.txt", b"not an image");
        write(root, "p2/extra/deep.png", PNG);
        write(root, "p2/photo.jpeg.png", PNG);
        write(root, "p2/renamed.txt", JPEG);
        write(root, ".DS_Store", b"\0\0\0\x01Bud1");
        let found = find_images(&[root.to_path_buf()]).unwrap();
        let got: Vec<_> = found
            .images
            .iter()
            .map(|i| {
                (
                    i.filename.as_str(),
                    i.custom_id.as_str(),
                    i.post_id.as_deref(),
                    i.mime,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("cover.png", "cover", None, "image/png"),
                ("p1/look1.jpg", "p1:look1", Some("p1"), "image/jpeg"),
                ("p1/look2.JPG", "p1:look2", Some("p1"), "image/jpeg"),
                (
                    "p2/extra/deep.png",
                    "p2:extra:deep",
                    Some("p2"),
                    "image/png"
                ),
                (
                    "p2/photo.jpeg.png",
                    "p2:photo.jpeg",
                    Some("p2"),
                    "image/png"
                ),
                // The bytes decide, not the extension.
                ("p2/renamed.txt", "p2:renamed", Some("p2"), "image/jpeg"),
            ]
        );
        assert_eq!(found.skipped, 2, "notes.txt and .DS_Store");
        assert_eq!(found.images[1].bytes, JPEG.len() as u64);
    }

    #[test]
    fn ids_use_only_the_characters_the_service_takes() {
        assert_eq!(id_for("p7/look3"), "p7:look3");
        assert_eq!(id_for("spring 2026/été (1)"), "spring_2026:_t___1_");
    }

    #[test]
    fn files_named_alike_get_distinct_ids_and_filenames() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "a/look.jpg", JPEG);
        write(root, "b/look.jpg", JPEG);
        write(root, "b/look.png", PNG);
        let found = find_images(&[
            root.join("a/look.jpg"),
            root.join("b/look.jpg"),
            root.join("b/look.png"),
        ])
        .unwrap();
        let ids: Vec<_> = found.images.iter().map(|i| i.custom_id.as_str()).collect();
        let files: Vec<_> = found.images.iter().map(|i| i.filename.as_str()).collect();
        assert_eq!(ids, ["look", "look-2", "look-3"]);
        assert_eq!(files, ["look.jpg", "look-2.jpg", "look.png"]);
        assert!(found.images.iter().all(|i| i.post_id.is_none()));
    }

    #[test]
    fn a_missing_path_is_an_error_naming_it() {
        let err = find_images(&[PathBuf::from("/no/such/folder")]).unwrap_err();
        assert!(err.to_string().contains("/no/such/folder"), "{err}");
    }
}
