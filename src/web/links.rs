//! Links from the dashboard to the git server's web pages (commits, spec files), built from
//! configuration (`commit_url`, `repo_web_url`). Only `http(s)://` URLs ever reach an `href`,
//! so a configured `javascript:` template is dropped instead of rendered.

use super::AppInfo;

/// Only http(s) links from configuration reach an `href`.
fn web_link(url: String) -> Option<String> {
    (url.starts_with("https://") || url.starts_with("http://")).then_some(url)
}

impl AppInfo {
    /// Link to a commit: `commit_url` with `{sha}` replaced, else `repo_web_url/commit/SHA`.
    pub fn commit_href(&self, sha: &str) -> Option<String> {
        let url = match (&self.commit_url, &self.repo_web_url) {
            (Some(template), _) => template.replace("{sha}", sha),
            (None, Some(base)) => format!("{}/commit/{sha}", base.trim_end_matches('/')),
            (None, None) => return None,
        };
        web_link(url)
    }

    /// Link to a file on the branch: `repo_web_url` with `{path}` (and `{branch}`) replaced,
    /// else `repo_web_url/blob/BRANCH/PATH` (GitHub, Gitea and GitLab all answer that).
    pub fn file_href(&self, path: &str) -> Option<String> {
        let base = self.repo_web_url.as_ref()?;
        let path = path.trim_start_matches("./");
        let url = if base.contains("{path}") {
            base.replace("{path}", path)
                .replace("{branch}", &self.branch)
        } else {
            format!("{}/blob/{}/{path}", base.trim_end_matches('/'), self.branch)
        };
        web_link(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_from_configuration() {
        let info = AppInfo {
            branch: "main".into(),
            repo_web_url: Some("https://git.example.com/org/specs/".into()),
            ..Default::default()
        };
        assert_eq!(
            info.commit_href("abc").as_deref(),
            Some("https://git.example.com/org/specs/commit/abc")
        );
        assert_eq!(
            info.file_href("./a/b.yaml").as_deref(),
            Some("https://git.example.com/org/specs/blob/main/a/b.yaml")
        );
        let info = AppInfo {
            commit_url: Some("javascript:alert({sha})".into()),
            ..Default::default()
        };
        assert_eq!(info.commit_href("abc"), None);
    }
}
