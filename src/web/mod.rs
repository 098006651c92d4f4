//! The read-only HTTP endpoint (`[http] listen`): the trading-day page, a run's page, Prometheus
//! metrics, the status document and a liveness probe. It runs on the daemon's runtime; whatever
//! reads files or the history does so on a thread of its own, never on the loop.

mod page;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, Http};
use crate::observe::Metrics;

/// What the handlers share.
pub struct Web {
    pub config: RwLock<Arc<Config>>,
    pub metrics: Arc<Metrics>,
    /// Asks the scheduling loop to answer (`/healthz`).
    pub loop_probe: mpsc::UnboundedSender<oneshot::Sender<()>>,
    token: Option<String>,
}

impl Web {
    pub fn new(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        loop_probe: mpsc::UnboundedSender<oneshot::Sender<()>>,
    ) -> Arc<Web> {
        let token = config.http.as_ref().and_then(|h| h.token.clone());
        Arc::new(Web {
            config: RwLock::new(config),
            metrics,
            loop_probe,
            token,
        })
    }

    pub fn config(&self) -> Arc<Config> {
        match self.config.read() {
            Ok(c) => Arc::clone(&c),
            Err(e) => Arc::clone(&e.into_inner()),
        }
    }

    pub fn set_config(&self, config: Arc<Config>) {
        match self.config.write() {
            Ok(mut c) => *c = config,
            Err(e) => *e.into_inner() = config,
        }
    }
}

/// Binds `[http] listen` and serves until the process ends. A port that cannot be bound is
/// logged and the daemon goes on firing without the endpoint.
pub async fn serve(http: Http, web: Arc<Web>) {
    let listener = match tokio::net::TcpListener::bind(http.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(
                "❗ cannot listen on {} ([http] listen): {e}; the page, /metrics and /api/status are off, jobs fire as usual",
                http.listen
            );
            return;
        }
    };
    tracing::info!(
        "🌐 http://{}/ (page, /metrics, /api/status, /healthz)",
        http.listen
    );
    let app = router(web);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("❗ the HTTP endpoint stopped: {e}");
    }
}

fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(day_page))
        .route("/runs/{id}", get(run_page))
        .route("/metrics", get(metrics))
        .route("/api/status", get(api_status))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&web),
            authorize,
        ))
        // The liveness probe carries nothing secret: open, for load balancers and systemd.
        .route("/healthz", get(healthz))
        .layer(axum::middleware::from_fn(headers))
        .with_state(web)
}

/// Off loopback every request carries the bearer token.
async fn authorize(State(web): State<Arc<Web>>, req: Request, next: Next) -> Response {
    if let Some(token) = &web.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(given.as_bytes(), token.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a bearer token is required (Authorization: Bearer <token>)\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Runs `f` on a thread of its own (history reads, the cluster's status: they may block, and
/// the cluster's reader starts a runtime of its own).
async fn off_loop<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("hedge-http".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .ok()?;
    rx.await.ok()
}

fn error(status: StatusCode, message: String) -> Response {
    (status, format!("{message}\n")).into_response()
}

async fn healthz(State(web): State<Arc<Web>>) -> Response {
    let (tx, rx) = oneshot::channel();
    if web.loop_probe.send(tx).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the scheduling loop is gone".into(),
        );
    }
    match tokio::time::timeout(Duration::from_secs(2), rx).await {
        Ok(Ok(())) => "ok\n".into_response(),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the scheduling loop did not answer within 2 s".into(),
        ),
    }
}

async fn metrics(State(web): State<Arc<Web>>) -> Response {
    // The calendar's gauges take a little computing: not on the loop's thread.
    let (metrics, config) = (Arc::clone(&web.metrics), web.config());
    let Some(text) = off_loop(move || metrics.encode(&config, Utc::now())).await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "metrics failed".into());
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn api_status(State(web): State<Arc<Web>>) -> Response {
    let config = web.config();
    let gathered = off_loop(move || crate::status::gather(&config, Utc::now())).await;
    match gathered {
        Some(Ok(status)) => match serde_json::to_string_pretty(&status) {
            Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        Some(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "status failed".into()),
    }
}

#[derive(serde::Deserialize)]
struct DayQuery {
    date: Option<String>,
}

async fn day_page(State(web): State<Arc<Web>>, Query(q): Query<DayQuery>) -> Response {
    let config = web.config();
    let now = Utc::now();
    let date = match q.date.as_deref() {
        None | Some("") => now.with_timezone(&config.calendar().tz()).date_naive(),
        Some(d) => match chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d") {
            Ok(d) => d,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid date `{d}`: expected YYYY-MM-DD"),
                );
            }
        },
    };
    // The days the history can speak of, and the next year's plan.
    let today = now.with_timezone(&config.calendar().tz()).date_naive();
    let kept = chrono::Duration::from_std(config.scheduler.history_retention)
        .unwrap_or(chrono::Duration::days(90));
    let oldest = today - kept - chrono::Duration::days(1);
    let latest = today + chrono::Duration::days(366);
    if date < oldest || date > latest {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "`{date}` is out of range: the page shows {oldest} to {latest} (the history's retention, and a year ahead)"
            ),
        );
    }
    match off_loop(move || page::day(&config, date, now)).await {
        Some(Ok(html)) => Html(html).into_response(),
        Some(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "the page failed".into()),
    }
}

async fn run_page(State(web): State<Arc<Web>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return error(StatusCode::BAD_REQUEST, format!("invalid run id `{id}`"));
    };
    let config = web.config();
    match off_loop(move || page::run(&config, id)).await {
        Some(Ok(Some(html))) => Html(html).into_response(),
        Some(Ok(None)) => error(StatusCode::NOT_FOUND, format!("no run {id} in the history")),
        Some(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "the page failed".into()),
    }
}
