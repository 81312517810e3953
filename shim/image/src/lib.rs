//! Our apps as OCI images (see the crate's description).
