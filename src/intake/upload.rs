//! Items made from uploaded files (multipart parts, and the command-line client's walk):
//! the ids a file's name gives, its type by magic bytes, and what a part tells intake
//! besides its bytes.

/// What an item made from a multipart part carries besides its image: set by the API's
/// multipart extractor, never read from JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FromPart {
    /// How the item's rejection names the part, e.g. `image part "p7/look3.jpg"`; it takes
    /// the place of `image_base64` at the start of an image's reason.
    pub label: String,
    /// The custom_id the filename gives, used when the item has none of its own; made unique
    /// in the job (`look`, `look-2`, …) rather than rejected when it is taken.
    pub id_stem: Option<String>,
    /// Why the part cannot be an item at all (an unknown part name, a `file` entry naming no
    /// part, a part over the size limit): the item is rejected with `label: refused`.
    pub refused: Option<String>,
}

/// The ids a file's name gives: the custom_id stem (the path without extension, folders
/// joined by `:`, other characters than `A-Z a-z 0-9 _ . : -` as `_`) and the post_id (the
/// first folder, when the name has one). `p7/look3.jpg` → (`p7:look3`, `p7`); `look.jpg` →
/// (`look`, none). `\` separates folders too; empty, `.` and `..` segments are dropped.
pub fn ids_from_filename(filename: &str) -> (Option<String>, Option<String>) {
    let segments: Vec<&str> = filename
        .split(['/', '\\'])
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "." && *s != "..")
        .collect();
    let Some((last, folders)) = segments.split_last() else {
        return (None, None);
    };
    let stem = match last.rfind('.') {
        Some(dot) if dot > 0 => &last[..dot],
        _ => last,
    };
    let mut path: Vec<&str> = folders.to_vec();
    path.push(stem);
    let id = custom_id_from_path(&path.join("/"));
    let post_id = folders.first().map(|f| f.to_string());
    ((!id.is_empty()).then_some(id), post_id)
}

/// A relative path (without extension) as a custom_id, in the characters the service takes
/// (`A-Z a-z 0-9 _ . : -`): folders joined by `:` (`p7/look3` → `p7:look3`), anything else
/// `_`.
pub fn custom_id_from_path(stem: &str) -> String {
    stem.chars()
        .map(|c| match c {
            '/' => ':',
            c if c.is_ascii_alphanumeric() || "_.:-".contains(c) => c,
            _ => '_',
        })
        .collect()
}

/// The image type by its first bytes (12 are enough): PNG, JPEG, GIF or WEBP.
pub fn magic_mime(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if head.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The (custom_id stem, post_id) of `name`, "" for none.
    fn ids(name: &str) -> (String, String) {
        let (id, post) = ids_from_filename(name);
        (id.unwrap_or_default(), post.unwrap_or_default())
    }

    fn pair(id: &str, post: &str) -> (String, String) {
        (id.to_string(), post.to_string())
    }

    #[test]
    fn folders_give_the_post_and_the_path_gives_the_id() {
        assert_eq!(ids("p7/look3.jpg"), pair("p7:look3", "p7"));
        assert_eq!(ids("look3.jpg"), pair("look3", ""));
        assert_eq!(ids("p2/extra/deep.png"), pair("p2:extra:deep", "p2"));
        assert_eq!(ids("photo.jpeg.png"), pair("photo.jpeg", ""));
        assert_eq!(ids("noext"), pair("noext", ""));
    }

    #[test]
    fn odd_names_are_made_safe() {
        assert_eq!(
            ids("spring 2026\\été (1).jpg"),
            pair("spring_2026:_t___1_", "spring 2026")
        );
        assert_eq!(ids("/abs/./x/../a.png"), pair("abs:x:a", "abs"));
        assert_eq!(ids(".hidden"), pair(".hidden", ""));
        assert_eq!(ids(""), pair("", ""));
        assert_eq!(ids("a/"), pair("a", ""));
    }

    #[test]
    fn magic_bytes_decide_the_type() {
        assert_eq!(magic_mime(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(magic_mime(&[0xff, 0xd8, 0xff, 0xe0]), Some("image/jpeg"));
        assert_eq!(magic_mime(b"GIF89a\x01\x00"), Some("image/gif"));
        assert_eq!(magic_mime(b"RIFF\x10\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(magic_mime(b"RIFF\x10\0\0\0WAVEfmt "), None);
        assert_eq!(magic_mime(b"hello"), None);
        assert_eq!(magic_mime(b""), None);
    }

    use std::collections::HashSet;

    use crate::intake::{check_items, IntakeLimits, ItemInput};

    fn uploaded(label: &str, stem: Option<&str>, bytes: &[u8]) -> ItemInput {
        ItemInput {
            image_bytes: Some(bytes::Bytes::copy_from_slice(bytes)),
            part: Some(FromPart {
                label: label.into(),
                id_stem: stem.map(str::to_owned),
                refused: None,
            }),
            ..ItemInput::default()
        }
    }

    #[test]
    fn ids_from_filenames_are_made_unique_rather_than_rejected() {
        let png = testkit::png(8, 8);
        let taken: HashSet<String> = ["look".to_string()].into();
        let mut explicit = uploaded("image part \"x\"", None, &png);
        explicit.custom_id = Some("look-3".into());
        let long = "x".repeat(70);
        let inputs = vec![
            uploaded("image part \"a/look.png\"", Some("look"), &png),
            uploaded("image part \"b/look.png\"", Some("look"), &png),
            explicit,
            uploaded("image part \"c/look.png\"", Some("look"), &png),
            uploaded("image part \"long\"", Some(&long), &png),
            uploaded("image part \"long2\"", Some(&long), &png),
        ];
        let result = check_items(inputs, 5, &taken, &IntakeLimits::default());
        assert!(result.rejected.is_empty(), "{:?}", result.rejected);
        let ids: Vec<&str> = result.items.iter().map(|i| i.custom_id.as_str()).collect();
        let cut = "x".repeat(64);
        let cut2 = format!("{}-2", "x".repeat(62));
        assert_eq!(
            ids,
            [
                "look-2",
                "look-4",
                "look-3",
                "look-5",
                cut.as_str(),
                cut2.as_str()
            ]
        );
    }

    #[test]
    fn rejections_name_the_part() {
        let mut refused = uploaded("part \"photo\"", Some("a"), b"");
        refused.image_bytes = None;
        refused.part.as_mut().unwrap().refused = Some("not a part this endpoint takes".into());
        let inputs = vec![
            uploaded("image part \"notes.txt\"", Some("notes"), b"hello there"),
            refused,
            uploaded("image part \"ok.png\"", Some("ok"), &testkit::png(4, 4)),
        ];
        let result = check_items(inputs, 0, &HashSet::new(), &IntakeLimits::default());
        assert_eq!(result.accepted, 1);
        let reasons: Vec<(&str, &str)> = result
            .rejected
            .iter()
            .map(|r| (r.custom_id.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(reasons.len(), 2);
        assert_eq!(reasons[0].0, "notes");
        assert!(
            reasons[0]
                .1
                .starts_with("image part \"notes.txt\": not a PNG, JPEG, WEBP or GIF image"),
            "{}",
            reasons[0].1
        );
        assert_eq!(
            reasons[1],
            ("a", "part \"photo\": not a part this endpoint takes")
        );
        assert_eq!(result.items[2].custom_id, "ok");
    }
}
