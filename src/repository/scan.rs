//! Turns a repository directory into the desired state: which models exist, their configurations
//! (or why a configuration is invalid), and which version directories hold model files. Pure
//! reading of small files; nothing is loaded here.

use std::collections::BTreeMap;
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::proto::inference::ModelConfig;
use crate::proto::inference::model_version_policy::PolicyChoice;

use crate::routing::{TrafficPolicy, policy};

use super::model_config::{self, CONFIG_FILE, DEFAULT_MODEL_FILENAME};

/// A model directory as found on disk.
#[derive(Debug, Clone)]
pub struct ModelSource {
    pub name: String,
    pub dir: PathBuf,
    /// The parsed configuration; `None` when the model has no `config.pbtxt`, in which case the
    /// backend completes one from the model file at load time.
    pub config: Option<ModelConfig>,
    /// Identifies the configuration file's contents (0 when there is none).
    pub config_digest: u64,
    /// Every numeric version directory.
    pub versions: BTreeMap<u64, VersionSource>,
    /// The model's `traffic.yaml`: `Ok(None)` when there is none, `Err` saying why it is invalid.
    pub traffic: Result<Option<TrafficPolicy>, String>,
}

/// One version directory as found on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionSource {
    /// The model file this version loads.
    pub file: PathBuf,
    /// What the directory held when it was read.
    pub fingerprint: Fingerprint,
}

/// The files of a version directory with their sizes and modification times: two equal
/// fingerprints taken a settle interval apart mean nobody is writing there.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint {
    pub files: Vec<(PathBuf, u64, SystemTime)>,
}

impl Fingerprint {
    /// Reads every file under `dir` (recursively, following symbolic links).
    pub fn of_dir(dir: &Path) -> Fingerprint {
        let mut files = Vec::new();
        collect_files(dir, dir, &mut files);
        files.sort();
        Fingerprint { files }
    }

    /// A short digest of the files (names, sizes, modification times), to tell later whether
    /// they changed.
    /// Stable across processes and releases, as it is written to `traffic.yaml`.
    pub fn digest(&self) -> String {
        let mut text = String::new();
        for (path, len, modified) in &self.files {
            let nanos = modified
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            text.push_str(&format!("{}\0{len}\0{nanos}\n", path.display()));
        }
        format!("{:016x}", crate::routing::router::key_hash(&text))
    }

    /// The most recent modification time of any file, if there are files.
    pub fn newest(&self) -> Option<SystemTime> {
        self.files.iter().map(|(_, _, t)| *t).max()
    }
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, u64, SystemTime)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            collect_files(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            out.push((rel, meta.len(), modified));
        }
    }
}

fn digest(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// The result of reading one model directory: a source, or the reason it cannot serve.
pub type ScannedModel = Result<ModelSource, String>;

/// Reads every model directory under `root`. Only the root itself failing to read is an error;
/// a bad model is recorded with its reason.
pub fn scan(root: &Path) -> std::io::Result<BTreeMap<String, ScannedModel>> {
    let mut models = BTreeMap::new();
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        models.insert(name.clone(), scan_model(&name, &entry.path()));
    }
    Ok(models)
}

/// Reads one model directory.
pub fn scan_model(name: &str, dir: &Path) -> ScannedModel {
    let config_path = dir.join(CONFIG_FILE);
    let (config, config_digest) = match fs::read_to_string(&config_path) {
        Ok(text) => (Some(model_config::parse(&text)?), digest(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, 0),
        Err(e) => return Err(format!("cannot read {}: {e}", config_path.display())),
    };
    source_from(name, dir, config, config_digest)
}

/// Builds a source from a configuration already in hand (read from disk or given in a request).
pub fn source_from(
    name: &str,
    dir: &Path,
    config: Option<ModelConfig>,
    config_digest: u64,
) -> ScannedModel {
    if let Some(config) = &config
        && !config.name.is_empty()
        && config.name != name
    {
        return Err(format!(
            "configuration name '{}' does not match the model directory '{name}'",
            config.name
        ));
    }
    let file_name = config
        .as_ref()
        .map(|c| c.default_model_filename.as_str())
        .filter(|f| !f.is_empty())
        .unwrap_or(DEFAULT_MODEL_FILENAME);
    let versions = scan_versions(dir, file_name)?;
    Ok(ModelSource {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        config,
        config_digest,
        versions,
        traffic: policy::read(dir),
    })
}

/// Numeric subdirectories (version 0 and other names are ignored, as Triton does).
fn scan_versions(dir: &Path, file_name: &str) -> Result<BTreeMap<u64, VersionSource>, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut versions = BTreeMap::new();
    for entry in entries.flatten() {
        let Some(version) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        let path = entry.path();
        if version > 0 && path.is_dir() {
            let source = VersionSource {
                file: path.join(file_name),
                fingerprint: Fingerprint::of_dir(&path),
            };
            versions.insert(version, source);
        }
    }
    Ok(versions)
}

/// The versions a policy selects out of those on disk, in ascending order. Without a policy
/// Triton serves the latest one.
pub fn select_versions<T>(config: &ModelConfig, available: &BTreeMap<u64, T>) -> Vec<u64> {
    let choice = config
        .version_policy
        .as_ref()
        .and_then(|p| p.policy_choice.as_ref());
    match choice {
        Some(PolicyChoice::All(_)) => available.keys().copied().collect(),
        Some(PolicyChoice::Specific(specific)) => available
            .keys()
            .copied()
            .filter(|v| specific.versions.iter().any(|&s| s >= 0 && s as u64 == *v))
            .collect(),
        Some(PolicyChoice::Latest(latest)) => latest_n(available, latest.num_versions as usize),
        None => latest_n(available, 1),
    }
}

fn latest_n<T>(available: &BTreeMap<u64, T>, n: usize) -> Vec<u64> {
    let mut versions: Vec<u64> = available.keys().rev().take(n).copied().collect();
    versions.reverse();
    versions
}
