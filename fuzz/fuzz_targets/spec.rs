//! Fuzz the spec parser and validator, and the Dockerfile renderer behind it.
//!
//! Any byte string is a possible spec file. For every input:
//! * `parse_spec` never panics, hangs or blows the stack (libFuzzer catches all three);
//! * every diagnostic points at a real place (line ≥ 1, column ≥ 1) and names this file;
//! * diagnostics come back sorted, and parsing is deterministic;
//! * `spec` and `digest` are present exactly when there are no diagnostics;
//! * a valid spec's Dockerfile renders without panicking, starts from its base image, and is
//!   the same on every render.
//!
//! The file is called `fuzz.yaml`, so only specs with `name: fuzz` can be valid (the name must
//! equal the file stem); the seeds in `fuzz/seeds/` use that name to reach the valid path.
#![no_main]

use kiln::dockerfile::{self, RenderOptions, RevisionInfo};
use kiln::spec::{MAX_SPEC_BYTES, SpecContext, parse_spec};
use libfuzzer_sys::fuzz_target;

const PATH: &str = "fuzz.yaml";

fuzz_target!(|data: &[u8]| {
    let ctx = SpecContext::default();
    let parsed = parse_spec(PATH, data, &ctx);

    for d in &parsed.diagnostics {
        assert!(d.line >= 1, "diagnostic with line 0: {d}");
        assert!(d.column >= 1, "diagnostic with column 0: {d}");
        assert_eq!(d.path, PATH, "diagnostic names another file: {d}");
        assert!(!d.message.is_empty(), "diagnostic without a message: {d}");
    }
    assert!(
        parsed.diagnostics.is_sorted(),
        "diagnostics not sorted: {:?}",
        parsed.diagnostics
    );
    if data.len() > MAX_SPEC_BYTES {
        assert!(!parsed.is_valid(), "oversized input accepted");
    }

    // Deterministic: the same bytes give the same result.
    assert_eq!(parse_spec(PATH, data, &ctx), parsed, "parse_spec is not deterministic");

    if parsed.is_valid() {
        assert!(parsed.diagnostics.is_empty());
        let spec = parsed.spec.as_ref().expect("valid spec without `spec`");
        let digest = parsed.digest.as_deref().expect("valid spec without digest");
        assert!(!digest.is_empty(), "valid spec with an empty digest");
        assert_eq!(spec.name, "fuzz", "valid spec whose name is not the file stem");
        assert_eq!(
            kiln::spec::canonical_digest(spec),
            digest,
            "digest is not the canonical digest of the spec"
        );

        let rev = RevisionInfo::placeholder(digest);
        let options = RenderOptions::default();
        let dockerfile = dockerfile::render(spec, &rev, &options);
        assert!(
            dockerfile.contains(&format!("FROM {}", spec.base_image)),
            "Dockerfile does not start from the base image:\n{dockerfile}"
        );
        assert_eq!(dockerfile::render(spec, &rev, &options), dockerfile);
        // The CA-bundle and base-user variants take other branches of the renderer.
        let _ = dockerfile::render(
            spec,
            &rev,
            &RenderOptions {
                base_user: Some("app".into()),
                ca_bundle: true,
            },
        );
    } else {
        assert!(parsed.spec.is_none(), "invalid spec with `spec` set");
        assert!(parsed.digest.is_none(), "invalid spec with a digest");
    }
});
