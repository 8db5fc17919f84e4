//! Use cases between HTTP and everything else: submit, append, cancel, estimate, views.
//! Knows nothing of axum.

pub mod submit;
