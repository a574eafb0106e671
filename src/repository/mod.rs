//! The model repository on disk: Triton's layout (`<repo>/<model>/config.pbtxt`,
//! `<repo>/<model>/<version>/model.onnx`), its configuration files, and the scan that turns the
//! directory into the desired state.

pub mod model_config;
pub mod scan;

pub use scan::{ModelSource, ScannedModel, scan, scan_model, select_versions};
