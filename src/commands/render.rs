//! `kiln render`: the Dockerfile a spec file would build, with placeholder revision values.

use super::{CommandError, io};
use crate::dockerfile::{self, RenderOptions, RevisionInfo};
use crate::spec::{self, Diagnostic, SpecContext};
use std::path::Path;

/// The Dockerfile, or the problems that stop the spec from rendering.
#[derive(Debug)]
pub enum Rendered {
    Dockerfile(String),
    Invalid(Vec<Diagnostic>),
}

pub fn render(file: &Path, options: &RenderOptions) -> Result<Rendered, CommandError> {
    let bytes = std::fs::read(file).map_err(io("cannot read", file))?;
    let parsed = spec::parse_spec(&file.display().to_string(), &bytes, &SpecContext::default());
    Ok(match (parsed.spec, parsed.digest) {
        (Some(spec), Some(digest)) => Rendered::Dockerfile(dockerfile::render(
            &spec,
            &RevisionInfo::placeholder(&digest),
            options,
        )),
        _ => Rendered::Invalid(parsed.diagnostics),
    })
}
