//! `GET /dashboard`: a page for the person on call, built into the binary. It holds no figures
//! itself: it reads them with the admin token from `/stats/history`, `/stats/stream`,
//! `/stats/rooms/…` and `/admin/sessions`, so serving it needs no token and shows nothing
//! without one.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");

/// Only the hub's own files and requests: nothing the page shows can load or run anything else.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'";

fn respond(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

pub(super) async fn page() -> HttpResponse {
    respond("text/html; charset=utf-8", PAGE)
}

pub(super) async fn asset(name: web::Path<String>) -> HttpResponse {
    match name.as_str() {
        "app.js" => respond("text/javascript; charset=utf-8", SCRIPT),
        "app.css" => respond("text/css; charset=utf-8", STYLE),
        _ => HttpResponse::NotFound().json(serde_json::json!({"error": "Not found"})),
    }
}
