//! The model repository on disk: Triton's layout (`<repo>/<model>/config.pbtxt`,
//! `<repo>/<model>/<version>/model.onnx`), its configuration files, and the scan that turns the
//! directory into the desired state.

pub mod load_request;
pub mod model_config;
pub mod scan;
pub mod watcher;

pub use scan::{
    Fingerprint, ModelSource, ScannedModel, VersionSource, scan, scan_model, select_versions,
    source_from,
};
