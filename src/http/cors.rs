//! Cross-origin requests: which origins `--cors-origins` allows, as the router's CORS layer and
//! the socket path's answers apply it.

use tower_http::cors::{AllowOrigin, Any, CorsLayer};

/// The CORS layer of the router: `--cors-origins` allowed (`*`: any).
pub(crate) fn layer(origins: &str) -> CorsLayer {
    let allow = match self::origins(origins) {
        None => AllowOrigin::any(),
        Some(list) => AllowOrigin::list(list.filter_map(|o| o.parse().ok())),
    };
    CorsLayer::new().allow_origin(allow).allow_methods(Any).allow_headers(Any).expose_headers(Any)
}

/// The origins `--cors-origins` allows, or `None` for any (`*`).
pub(crate) fn origins(origins: &str) -> Option<impl Iterator<Item = &str>> {
    (origins.trim() != "*").then(|| origins.split(',').map(str::trim))
}

/// The origins `--cors-origins` lists; none when it is `*` (which allows any origin for CORS but
/// never counts as listing one).
pub(crate) fn listed(origins: &str) -> impl Iterator<Item = &str> {
    let any = origins.trim() == "*";
    origins.split(',').map(str::trim).filter(move |o| !any && !o.is_empty() && *o != "*")
}
