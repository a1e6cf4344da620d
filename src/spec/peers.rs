//! Agreement with the ecosystems' own test suites.
//!
//! A spec line that pip, conda or `docker pull` accepts must not fail `kiln check`, and a line
//! they refuse must not pass it. The tables in `peers/` hold the forms of three public test
//! files — conda's MatchSpec tests, pypa/packaging's requirement tests and the distribution
//! project's reference tests — each with the verdict its own parser gives, written down from
//! reading those files (see the header of each table). This module runs Kiln's rules over
//! them and measures, per set, how many valid forms Kiln accepts and how many invalid forms
//! it refuses. The figures are in BENCHMARKS.md ("Agreement with pip, conda and Docker");
//! `cargo test --lib spec::peers -- --nocapture` prints them.
//!
//! Kiln's own rules stay on top: one package per line, and a conda name pattern (`*`,
//! `test*`) is refused by `package-name-pattern`, because it parses but cannot be an install
//! request. Such forms carry the verdict `kiln:<rule>` and must be refused by exactly that rule.

use super::Rule;
use super::rules::{self, LineError};

/// What the peer's parser says about one form, and what Kiln must therefore do.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    /// The peer accepts it: Kiln must accept it.
    Valid,
    /// The peer refuses it: Kiln must refuse it (by any rule).
    Invalid,
    /// The peer accepts it but Kiln refuses it by a rule of its own.
    KilnRule(Rule),
}

struct Case {
    form: String,
    verdict: Verdict,
}

/// Read a table: `<verdict> <form>` per line, `#` comments, `<empty>` for the empty form.
fn table(text: &str) -> Vec<Case> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (verdict, form) = line.split_once(' ').unwrap_or((line, ""));
            let verdict = match verdict {
                "ok" => Verdict::Valid,
                "bad" => Verdict::Invalid,
                other => {
                    let id = other
                        .strip_prefix("kiln:")
                        .unwrap_or_else(|| panic!("unknown verdict in `{line}`"));
                    Verdict::KilnRule(
                        Rule::try_from(id.to_string()).unwrap_or_else(|e| panic!("{e}")),
                    )
                }
            };
            let form = if form == "<empty>" { "" } else { form };
            Case {
                form: form.to_string(),
                verdict,
            }
        })
        .collect()
}

/// Kiln's answer for one line: accepted, or the rule that refuses it.
type Answer = Result<(), Rule>;

fn line_answer(result: Result<(), LineError>, invalid_rule: Rule) -> Answer {
    match result {
        Ok(()) => Ok(()),
        Err(LineError::SeveralPackages(_)) => Err(Rule::OnePackagePerLine),
        Err(LineError::NamePattern(_)) => Err(Rule::PackageNamePattern),
        Err(LineError::Invalid(_)) => Err(invalid_rule),
    }
}

fn conda(line: &str) -> Answer {
    line_answer(rules::check_conda(line.trim()), Rule::CondaMatchspec)
}

fn pip(line: &str) -> Answer {
    line_answer(rules::check_pip(line.trim()), Rule::PipRequirement)
}

fn reference(text: &str) -> Answer {
    rules::check_image_reference(text)
        .map(|_| ())
        .map_err(|_| Rule::BaseImage)
}

/// The agreement of one set, and every disagreement (for the failure message).
#[derive(Default)]
struct Agreement {
    valid: usize,
    valid_accepted: usize,
    invalid: usize,
    invalid_refused: usize,
    own_rule: usize,
    own_rule_kept: usize,
    misses: Vec<String>,
}

impl Agreement {
    fn measure(cases: &[Case], check: impl Fn(&str) -> Answer) -> Agreement {
        let mut a = Agreement::default();
        for case in cases {
            let answer = check(&case.form);
            let agrees = match &case.verdict {
                Verdict::Valid => {
                    a.valid += 1;
                    a.valid_accepted += usize::from(answer.is_ok());
                    answer.is_ok()
                }
                Verdict::Invalid => {
                    a.invalid += 1;
                    a.invalid_refused += usize::from(answer.is_err());
                    answer.is_err()
                }
                Verdict::KilnRule(rule) => {
                    a.own_rule += 1;
                    let kept = answer == Err(*rule);
                    a.own_rule_kept += usize::from(kept);
                    kept
                }
            };
            if !agrees {
                a.misses.push(format!(
                    "{:?} {:?}: Kiln says {answer:?}",
                    case.verdict, case.form
                ));
            }
        }
        a
    }

    fn percent(part: usize, whole: usize) -> f64 {
        if whole == 0 {
            100.0
        } else {
            100.0 * part as f64 / whole as f64
        }
    }

    fn line(&self, name: &str) -> String {
        format!(
            "{name}: valid accepted {}/{} ({:.1} %), invalid refused {}/{} ({:.1} %), Kiln's own rule {}/{}",
            self.valid_accepted,
            self.valid,
            Self::percent(self.valid_accepted, self.valid),
            self.invalid_refused,
            self.invalid,
            Self::percent(self.invalid_refused, self.invalid),
            self.own_rule_kept,
            self.own_rule,
        )
    }

    /// ≥ 95 % of the valid forms accepted, every invalid form refused, every form Kiln's own
    /// rule refuses refused by that rule.
    fn assert_meets_target(&self, name: &str) {
        let summary = self.line(name);
        println!("{summary}");
        for miss in &self.misses {
            println!("  {miss}");
        }
        assert!(
            Self::percent(self.valid_accepted, self.valid) >= 95.0
                && self.invalid_refused == self.invalid
                && self.own_rule_kept == self.own_rule,
            "{summary}\n{}",
            self.misses.join("\n")
        );
    }
}

/// packaging's test_basic_valid_requirement_parsing: every combination of its names, extras,
/// URL-or-specifier, marker and whitespace, joined the way the test joins them.
fn pep508_product() -> Vec<Case> {
    let names = [
        "package",
        "pAcKaGe",
        "Package",
        "foo-bar.quux_bAz",
        "installer",
        "android12",
    ];
    // Sorted as Python sorts strings (uppercase before lowercase).
    let extras: [&[&str]; 4] = [&[], &["a"], &["a", "b"], &["B", "CDEF123", "a"]];
    let urls_and_specifiers: [(Option<&str>, &str); 17] = [
        (None, ""),
        (Some("https://example.com/packagename.zip"), ""),
        (
            Some("ssh://user:pass%20word@example.com/packagename.zip"),
            "",
        ),
        (
            Some("https://example.com/name;v=1.1/?query=foo&bar=baz#blah"),
            "",
        ),
        (Some("git+ssh://git.example.com/MyProject"), ""),
        (Some("git+ssh://git@github.com:pypa/packaging.git"), ""),
        (Some("git+https://git.example.com/MyProject.git@master"), ""),
        (Some("git+https://git.example.com/MyProject.git@v1.0"), ""),
        (
            Some("git+https://git.example.com/MyProject.git@refs/pull/123/head"),
            "",
        ),
        (None, "==={ws}arbitrarystring"),
        (None, "({ws}==={ws}arbitrarystring{ws})"),
        (None, "=={ws}1.0"),
        (None, "({ws}=={ws}1.0{ws})"),
        (None, "=={ws}1.0-alpha"),
        (None, "<={ws}1!3.0.0.rc2"),
        (None, ">{ws}2.2{ws},{ws}<{ws}3"),
        (None, "(>{ws}2.2{ws},{ws}<{ws}3)"),
    ];
    let markers = [
        None,
        Some("python_version{ws}>={ws}'3.3'"),
        Some("({ws}python_version{ws}>={ws}\"3.4\"{ws}){ws}and extra{ws}=={ws}\"oursql\""),
        Some(
            "sys_platform{ws}!={ws}'linux' and(os_name{ws}=={ws}'linux' or python_version{ws}>={ws}'3.3'{ws}){ws}",
        ),
    ];
    let mut out = Vec::new();
    for name in names {
        for extra in extras {
            for (url, specifier) in urls_and_specifiers {
                for marker in markers {
                    for ws in ["", " ", "\t"] {
                        let mut parts = vec![name.to_string()];
                        if !extra.is_empty() {
                            parts.push("[".into());
                            parts.push(extra.join(&format!("{ws},{ws}")));
                            parts.push("]".into());
                        }
                        if !specifier.is_empty() {
                            parts.push(specifier.replace("{ws}", ws));
                        }
                        if let Some(url) = url {
                            parts.push("@".into());
                            parts.push(url.into());
                        }
                        if let Some(marker) = marker {
                            parts.push(if url.is_some() { " ;" } else { ";" }.into());
                            parts.push(marker.replace("{ws}", ws));
                        }
                        out.push(Case {
                            form: parts.join(ws),
                            verdict: Verdict::Valid,
                        });
                    }
                }
            }
        }
    }
    // TestRequirementBehaviour.test_str_and_repr
    for url_or_specifier in ["", "@ https://url ", "!=2.0", "==2.*"] {
        for extra in ["", "[a]", "[a,b]", "[a1,b1,b2]"] {
            for marker in [
                "",
                "; python_version == \"3.11\"",
                "; \"3.\" not in python_version",
            ] {
                out.push(Case {
                    form: format!("name{extra}{url_or_specifier}{marker}"),
                    verdict: Verdict::Valid,
                });
            }
        }
    }
    out
}

fn conda_cases() -> Vec<Case> {
    table(include_str!("peers/conda_matchspec.txt"))
}

fn pep508_cases() -> Vec<Case> {
    let mut cases = table(include_str!("peers/pep508.txt"));
    cases.extend(pep508_product());
    cases
}

fn reference_cases() -> Vec<Case> {
    let mut cases = table(include_str!("peers/reference.txt"));
    // TestReferenceParse: a name of 255 characters is the limit.
    cases.push(Case {
        form: format!("{}a:tag", "a/".repeat(128)),
        verdict: Verdict::Invalid,
    });
    cases.push(Case {
        form: format!("{}a:tag-puts-this-over-max", "a/".repeat(127)),
        verdict: Verdict::Valid,
    });
    cases
}

#[test]
fn conda_matchspec_tests_agree() {
    Agreement::measure(&conda_cases(), conda).assert_meets_target("conda test_match_spec.py");
}

#[test]
fn packaging_requirement_tests_agree() {
    Agreement::measure(&pep508_cases(), pip).assert_meets_target("packaging test_requirements.py");
}

#[test]
fn distribution_reference_tests_agree() {
    Agreement::measure(&reference_cases(), reference)
        .assert_meets_target("distribution reference_test.go");
}

#[test]
fn the_tables_hold_what_their_headers_say() {
    let conda = conda_cases();
    assert!(conda.len() > 300, "{}", conda.len());
    assert!(conda.iter().any(|c| c.verdict == Verdict::Invalid));
    assert_eq!(pep508_product().len(), 6 * 4 * 17 * 4 * 3 + 48);
    assert!(pep508_cases().iter().any(|c| c.form.is_empty()));
    assert!(reference_cases().iter().any(|c| c.form.len() > 255));
}
