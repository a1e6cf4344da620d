//! The build context: an in-memory tar with the `Dockerfile` and, when given, the CA bundle.
//!
//! bollard's `build_image` panics without a body, so the context is always a tar, and a fixed
//! mtime makes the context of an unchanged Dockerfile byte-for-byte the same.

use crate::dockerfile::CA_BUNDLE_CONTEXT_NAME;

/// The build context: `Dockerfile` and, when given, the CA bundle.
pub(crate) fn build_context(
    dockerfile: &str,
    ca_bundle: Option<&[u8]>,
) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    append_file(&mut tar, "Dockerfile", dockerfile.as_bytes())?;
    if let Some(ca) = ca_bundle {
        append_file(&mut tar, CA_BUNDLE_CONTEXT_NAME, ca)?;
    }
    tar.into_inner()
}

fn append_file(tar: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_path(name)?;
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    // A fixed time: the context of an unchanged Dockerfile is byte-for-byte the same.
    header.set_mtime(946_684_800);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    tar.append(&header, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_context_holds_dockerfile_and_ca_bundle() {
        let tar = build_context("FROM x\n", Some(b"PEM")).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut files = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            files.push((entry.path().unwrap().display().to_string(), text));
        }
        assert_eq!(
            files,
            [
                ("Dockerfile".to_string(), "FROM x\n".to_string()),
                (CA_BUNDLE_CONTEXT_NAME.to_string(), "PEM".to_string())
            ]
        );
        assert_eq!(
            build_context("FROM x\n", None).unwrap(),
            build_context("FROM x\n", None).unwrap()
        );
    }
}
