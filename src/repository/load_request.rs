//! A model as a load request describes it (Triton's RepositoryModelLoad parameters): a
//! configuration given as JSON (`config`) overriding `config.pbtxt`, and optionally the model's
//! files themselves (`file:<version>/<name>`), which are written to a private temporary directory.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Component, Path, PathBuf};

use prost_reflect::DynamicMessage;

use super::model_config::model_config_descriptor;
use super::scan::{ScannedModel, scan_model, source_from};
use crate::proto::inference::ModelConfig;

/// Largest total size of files accepted in one load request.
pub const MAX_LOAD_FILES_BYTES: usize = 1 << 30;

/// A load request's model, and the temporary directory holding its files (kept alive until the
/// model is loaded; the loaded model no longer needs it).
pub struct Requested {
    pub scanned: ScannedModel,
    pub files_dir: Option<tempfile::TempDir>,
}

/// Parses a configuration in protobuf JSON form, as Triton's load request carries it.
pub fn parse_json_config(json: &str) -> Result<ModelConfig, String> {
    let mut de = serde_json::Deserializer::from_str(json);
    let message = DynamicMessage::deserialize(model_config_descriptor(), &mut de)
        .map_err(|e| format!("config parameter: {e}"))?;
    message
        .transcode_to::<ModelConfig>()
        .map_err(|e| format!("config parameter: {e}"))
}

/// Builds the model a load request asks for. Without parameters it is read from the repository.
pub fn resolve(
    root: &Path,
    name: &str,
    config_json: Option<&str>,
    files: Vec<(String, Vec<u8>)>,
) -> Result<Requested, String> {
    if config_json.is_none() && !files.is_empty() {
        return Err("file parameters need a config parameter as well".into());
    }
    let Some(json) = config_json else {
        let dir = root.join(name);
        if !dir.is_dir() {
            return Err(format!("no directory '{name}' in the model repository"));
        }
        return Ok(Requested {
            scanned: scan_model(name, &dir),
            files_dir: None,
        });
    };
    let config = parse_json_config(json)?;
    let digest = {
        let mut hasher = DefaultHasher::new();
        json.hash(&mut hasher);
        hasher.finish()
    };
    if files.is_empty() {
        return Ok(Requested {
            scanned: source_from(name, &root.join(name), Some(config), digest),
            files_dir: None,
        });
    }
    let total: usize = files.iter().map(|(_, data)| data.len()).sum();
    if total > MAX_LOAD_FILES_BYTES {
        return Err(format!(
            "files total {total} bytes, over the limit of {MAX_LOAD_FILES_BYTES}"
        ));
    }
    let dir = tempfile::Builder::new()
        .prefix("switchyard-load-")
        .tempdir()
        .map_err(|e| format!("cannot create a directory for the files: {e}"))?;
    for (rel, data) in &files {
        let path = safe_join(dir.path(), rel)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{rel}: {e}"))?;
        }
        std::fs::write(&path, data).map_err(|e| format!("{rel}: {e}"))?;
    }
    Ok(Requested {
        scanned: source_from(name, dir.path(), Some(config), digest),
        files_dir: Some(dir),
    })
}

/// Joins a relative path from a request, refusing anything that would leave `base`.
fn safe_join(base: &Path, rel: &str) -> Result<PathBuf, String> {
    let rel_path = Path::new(rel);
    let clean = rel_path
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if rel.is_empty() || !clean {
        return Err(format!(
            "file parameter path '{rel}' must be relative and stay inside the model"
        ));
    }
    Ok(base.join(rel_path))
}
