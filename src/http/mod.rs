//! What every HTTP endpoint shares: the JSON errors and the publisher's rights.

pub mod auth;
pub mod error;
