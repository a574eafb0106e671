//! The crate's one error type. Each variant names its subject (model, version, tensor) so that the
//! message alone tells a client what went wrong; `Error::code` gives the small closed set of outcome
//! codes, and only the protocol layer turns those into wire statuses.

/// Outcome classes, mirroring the gRPC codes a client needs to tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The request is malformed or does not match the model (INVALID_ARGUMENT).
    InvalidArgument,
    /// The model or version does not exist (NOT_FOUND).
    NotFound,
    /// The model exists but cannot serve right now (UNAVAILABLE).
    Unavailable,
    /// A limit was hit; retrying later may succeed (RESOURCE_EXHAUSTED).
    ResourceExhausted,
    /// The request's timeout expired before it ran (DEADLINE_EXCEEDED).
    DeadlineExceeded,
    /// The model failed while executing (INTERNAL).
    Internal,
    /// The operation is not provided by this server (UNIMPLEMENTED).
    Unimplemented,
    /// The operation does not apply to the current state (FAILED_PRECONDITION).
    FailedPrecondition,
    /// The caller did not prove who it is (UNAUTHENTICATED).
    Unauthenticated,
    /// The operation is not allowed where it was asked (PERMISSION_DENIED).
    PermissionDenied,
}

/// Every failure the server reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No model of that name is known (Triton's wording, which clients match on).
    #[error("Request for unknown model: '{model}' is not found")]
    UnknownModel { model: String },

    /// The model is known but the version is not.
    #[error("Request for unknown model: '{model}' version {version} is not found")]
    UnknownVersion { model: String, version: String },

    /// The request does not fit the model; the message names tensor, expected and got.
    #[error("{0}")]
    InvalidRequest(String),

    /// The model (or version) is known but not ready to serve.
    #[error("model '{model}' is not ready: {reason}")]
    NotReady { model: String, reason: String },

    /// The server cannot do this now (for example, model control is disabled).
    #[error("{0}")]
    Unavailable(String),

    /// A configuration file could not be read or is invalid.
    #[error("model '{model}': invalid configuration: {reason}")]
    Config { model: String, reason: String },

    /// A model version could not be loaded.
    #[error("model '{model}' version {version}: load failed: {reason}")]
    Load {
        model: String,
        version: u64,
        reason: String,
    },

    /// Execution of a model failed.
    #[error("model '{model}' version {version}: execution failed: {reason}")]
    Execution {
        model: String,
        version: u64,
        reason: String,
    },

    /// A limit protecting the server was reached.
    #[error("{0}")]
    Exhausted(String),

    /// The request waited longer than its timeout; the message names the model and version.
    #[error("{0}")]
    DeadlineExceeded(String),

    /// The operation exists in the protocol but is not provided.
    #[error("{0}")]
    Unsupported(String),

    /// The operation does not apply to the model's current state; the message says why.
    #[error("{0}")]
    FailedPrecondition(String),

    /// A management call without the configured bearer token.
    #[error("{0}")]
    Unauthenticated(String),

    /// The operation is not allowed on this endpoint; the message says where it is.
    #[error("{0}")]
    PermissionDenied(String),
}

impl Error {
    /// The outcome class of this error.
    pub fn code(&self) -> Code {
        match self {
            Error::UnknownModel { .. } | Error::UnknownVersion { .. } => Code::NotFound,
            Error::InvalidRequest(_) | Error::Config { .. } => Code::InvalidArgument,
            Error::NotReady { .. } | Error::Unavailable(_) => Code::Unavailable,
            Error::Load { .. } | Error::Execution { .. } => Code::Internal,
            Error::Exhausted(_) => Code::ResourceExhausted,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Unsupported(_) => Code::Unimplemented,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
        }
    }

    /// Shorthand for an invalid-request error with a formatted message.
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::InvalidRequest(message.into())
    }
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
