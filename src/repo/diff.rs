//! Tree comparison restricted to the specs folder, and bounded blob reads.
//!
//! # Why not `diff_tree_to_tree`
//!
//! libgit2's `git_diff_tree_to_tree` with a pathspec limits the diff to the specs folder, but
//! (checked in libgit2 1.9, `diff_generate.c`) its tree iterators still visit *every* entry
//! under the pathspec prefix, including subtrees whose ids are equal on both sides. With
//! 10,000 specs every commit would cost 20,000 entry visits, whatever it changed.
//!
//! The comparison here does what `git diff-tree` does: it starts at the specs folder's
//! subtree of both commits (that is the pathspec), returns at once when the two subtree ids
//! are equal (a commit that does not touch the specs folder costs a few lookups), and
//! descends only into subtrees whose ids differ. A change costs the size of the directories
//! on its path, not the size of the repository. It also never pairs files up as renames (see
//! the module documentation of [`super`]), and it reports the spec-relevant outcome of a type
//! change directly: a spec-named symlink or submodule is [`FileChange::NotAFile`] (reported,
//! never read or followed), and removing one is a deletion like removing a file.

use super::{FileChange, MAX_FULL_READ, NotAFile, TRUNCATED_LEN};
use git2::{FileMode, ObjectType, Odb, Oid, Repository, Tree, TreeEntry};
use std::cmp::Ordering;
use std::io::Read;
use std::path::Path;

/// The specs folder, normalised: `""` for the repository root, else `a/b` without leading or
/// trailing slashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SpecsDir {
    dir: String,
}

impl SpecsDir {
    /// Normalises a configured folder: `""`, `"."`, `"./"` and `"/"`-free relative paths are
    /// accepted; `..` components and absolute paths are refused (a spec folder outside the
    /// repository makes no sense and is most likely a configuration mistake).
    pub(crate) fn parse(specs_dir: &str) -> Result<SpecsDir, &'static str> {
        if specs_dir.starts_with('/') || specs_dir.starts_with('\\') {
            return Err("must be relative to the repository root");
        }
        if specs_dir.contains('\\') {
            return Err("use forward slashes");
        }
        let mut parts = Vec::new();
        for part in specs_dir.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err("must not leave the repository (\"..\")"),
                ".git" => return Err("must not point into .git"),
                p => parts.push(p),
            }
        }
        Ok(SpecsDir {
            dir: parts.join("/"),
        })
    }

    /// The prefix of every path reported: `""` or `"a/b/"`.
    fn prefix(&self) -> String {
        if self.dir.is_empty() {
            String::new()
        } else {
            format!("{}/", self.dir)
        }
    }

    /// The specs folder's subtree in `root`, or `None` when the folder does not exist at that
    /// commit (or is not a folder): there are no specs then.
    pub(crate) fn subtree<'r>(
        &self,
        repo: &'r Repository,
        root: Tree<'r>,
    ) -> Result<Option<Tree<'r>>, git2::Error> {
        if self.dir.is_empty() {
            return Ok(Some(root));
        }
        let entry = match root.get_path(Path::new(&self.dir)) {
            Ok(entry) => entry,
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if entry.kind() != Some(ObjectType::Tree) {
            return Ok(None);
        }
        repo.find_tree(entry.id()).map(Some)
    }
}

/// Whether a file name counts as a spec. Case-sensitive, like the `*.yaml` / `*.yml` globs of
/// the design. Hidden files and a bare `.yaml` count too: they are shown to validation, which
/// reports them, rather than dropped here.
pub(crate) fn is_spec_name(name: &[u8]) -> bool {
    name.ends_with(b".yaml") || name.ends_with(b".yml")
}

/// What a tree entry is, as far as specs are concerned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    /// A folder: descend.
    Tree,
    /// A regular or executable file.
    File,
    /// A symlink (120000), a submodule (160000) or anything unknown: never a spec.
    Other,
}

fn entry_kind(entry: &TreeEntry<'_>) -> EntryKind {
    let mode = entry.filemode();
    if mode == i32::from(FileMode::Tree) {
        EntryKind::Tree
    } else if mode == i32::from(FileMode::Blob) || mode == i32::from(FileMode::BlobExecutable) {
        EntryKind::File
    } else {
        EntryKind::Other
    }
}

/// A regular or executable file (not a folder, symlink or submodule).
pub(crate) fn is_regular_file(entry: &TreeEntry<'_>) -> bool {
    entry_kind(entry) == EntryKind::File
}

/// A folder.
pub(crate) fn is_tree(entry: &TreeEntry<'_>) -> bool {
    entry_kind(entry) == EntryKind::Tree
}

/// git's tree order: names compared bytewise, a folder's name as if it ended in `/`.
fn git_order(a: &TreeEntry<'_>, b: &TreeEntry<'_>) -> Ordering {
    let (an, bn) = (a.name_bytes(), b.name_bytes());
    let n = an.len().min(bn.len());
    an[..n].cmp(&bn[..n]).then_with(|| {
        let end = |name: &[u8], entry: &TreeEntry<'_>| match name.get(n) {
            Some(&c) => c,
            None if entry_kind(entry) == EntryKind::Tree => b'/',
            None => 0,
        };
        end(an, a)
            .cmp(&end(bn, b))
            .then_with(|| an.len().cmp(&bn.len()))
    })
}

/// Sorted entries of a tree (git already stores them sorted; sorting again is a linear check
/// and protects the merge below from a hand-crafted unsorted tree).
fn sorted_entries<'t>(tree: Option<&'t Tree<'_>>) -> Vec<TreeEntry<'t>> {
    let Some(tree) = tree else {
        return Vec::new();
    };
    let mut entries: Vec<TreeEntry<'t>> = tree.iter().collect();
    if !entries.is_sorted_by(|a, b| git_order(a, b) != Ordering::Greater) {
        entries.sort_by(git_order);
    }
    entries
}

/// Compares trees and reads the blobs of changed spec files.
pub(crate) struct TreeDiffer<'r> {
    repo: &'r Repository,
    odb: Odb<'r>,
}

impl<'r> TreeDiffer<'r> {
    pub(crate) fn new(repo: &'r Repository) -> Result<TreeDiffer<'r>, git2::Error> {
        Ok(TreeDiffer {
            repo,
            odb: repo.odb()?,
        })
    }

    /// The spec changes from `old` to `new` (both already narrowed to the specs folder;
    /// `None` is the empty tree), in git path order. Paths are prefixed with `dir`'s prefix so
    /// they are relative to the repository root.
    pub(crate) fn diff(
        &self,
        dir: &SpecsDir,
        old: Option<&Tree<'_>>,
        new: Option<&Tree<'_>>,
    ) -> Result<Vec<FileChange>, git2::Error> {
        let mut out = Vec::new();
        self.diff_trees(old, new, &dir.prefix(), &mut out)?;
        Ok(out)
    }

    fn diff_trees(
        &self,
        old: Option<&Tree<'_>>,
        new: Option<&Tree<'_>>,
        prefix: &str,
        out: &mut Vec<FileChange>,
    ) -> Result<(), git2::Error> {
        if let (Some(o), Some(n)) = (old, new)
            && o.id() == n.id()
        {
            return Ok(());
        }
        let olds = sorted_entries(old);
        let news = sorted_entries(new);
        let (mut i, mut j) = (0, 0);
        while i < olds.len() || j < news.len() {
            let order = match (olds.get(i), news.get(j)) {
                (Some(a), Some(b)) => git_order(a, b),
                (Some(_), None) => Ordering::Less,
                _ => Ordering::Greater,
            };
            match order {
                Ordering::Less => {
                    self.entry_changed(Some(&olds[i]), None, prefix, out)?;
                    i += 1;
                }
                Ordering::Greater => {
                    self.entry_changed(None, Some(&news[j]), prefix, out)?;
                    j += 1;
                }
                Ordering::Equal => {
                    self.entry_changed(Some(&olds[i]), Some(&news[j]), prefix, out)?;
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(())
    }

    /// One path, present on one or both sides. When both are given they have the same name
    /// and are both folders or both non-folders (git order keeps a file `x` and a folder `x`
    /// apart, so those arrive as a removal and an addition).
    fn entry_changed(
        &self,
        old: Option<&TreeEntry<'_>>,
        new: Option<&TreeEntry<'_>>,
        prefix: &str,
        out: &mut Vec<FileChange>,
    ) -> Result<(), git2::Error> {
        if let (Some(o), Some(n)) = (old, new)
            && o.id() == n.id()
            && entry_kind(o) == entry_kind(n)
        {
            // Same content; at most the executable bit changed, which means nothing to a spec.
            // (A file and a symlink whose target spells the same bytes share a blob id.)
            return Ok(());
        }
        let entry = new.or(old).expect("at least one side");
        let name = entry.name_bytes();
        let old_kind = old.map(entry_kind);
        let new_kind = new.map(entry_kind);

        if old_kind == Some(EntryKind::Tree) || new_kind == Some(EntryKind::Tree) {
            let sub_prefix = format!("{prefix}{}/", String::from_utf8_lossy(name));
            let old_tree = match old {
                Some(o) if old_kind == Some(EntryKind::Tree) => Some(self.repo.find_tree(o.id())?),
                _ => None,
            };
            let new_tree = match new {
                Some(n) if new_kind == Some(EntryKind::Tree) => Some(self.repo.find_tree(n.id())?),
                _ => None,
            };
            return self.diff_trees(old_tree.as_ref(), new_tree.as_ref(), &sub_prefix, out);
        }

        if !is_spec_name(name) {
            return Ok(());
        }
        let path = format!("{prefix}{}", String::from_utf8_lossy(name));
        match (old_kind, new) {
            (_, Some(n)) if new_kind == Some(EntryKind::File) => {
                let bytes = self.read_blob(n.id())?;
                out.push(FileChange::Upserted { path, bytes });
            }
            (_, Some(n)) => {
                let what = self.not_a_file(n)?;
                out.push(FileChange::NotAFile { path, what });
            }
            (Some(_), None) => out.push(FileChange::Deleted { path }),
            (None, None) => {}
        }
        Ok(())
    }

    /// What a spec-named entry that is not a regular file is: a symlink (its target, which is
    /// the blob's content, capped) or a submodule (the commit it pins).
    pub(crate) fn not_a_file(&self, entry: &TreeEntry<'_>) -> Result<NotAFile, git2::Error> {
        let mode = entry.filemode();
        if mode == i32::from(FileMode::Link) {
            let target = self.read_blob(entry.id())?;
            let target = String::from_utf8_lossy(&target[..target.len().min(4096)]).into_owned();
            Ok(NotAFile::Symlink { target })
        } else if mode == i32::from(FileMode::Commit) {
            Ok(NotAFile::Submodule {
                commit: entry.id().to_string(),
            })
        } else {
            Ok(NotAFile::Other { mode })
        }
    }

    /// The content of a blob, capped: blobs up to [`MAX_FULL_READ`] are read whole; larger
    /// ones yield only their first [`TRUNCATED_LEN`] bytes, which is enough for validation to
    /// refuse them for their size.
    ///
    /// The size comes from the object header, so a large blob is never inflated whole when the
    /// object database can stream it (loose objects). Packed objects cannot be streamed by
    /// libgit2; those are read whole once and truncated at once, so memory use is bounded by
    /// one such blob at a time and nothing large is kept.
    pub(crate) fn read_blob(&self, id: Oid) -> Result<Vec<u8>, git2::Error> {
        let (size, _kind) = self.odb.read_header(id)?;
        if size <= MAX_FULL_READ {
            return Ok(self.repo.find_blob(id)?.content().to_vec());
        }
        if let Ok((reader, _, _)) = self.odb.reader(id) {
            let mut bytes = Vec::with_capacity(TRUNCATED_LEN);
            if reader
                .take(TRUNCATED_LEN as u64)
                .read_to_end(&mut bytes)
                .is_ok()
                && bytes.len() == TRUNCATED_LEN
            {
                return Ok(bytes);
            }
        }
        let blob = self.repo.find_blob(id)?;
        let content = blob.content();
        Ok(content[..content.len().min(TRUNCATED_LEN)].to_vec())
    }
}
