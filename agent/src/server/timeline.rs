//! `/timeline/{namespace}/{pod}`: a pod's recent exits, OOM kills and pressure episodes from
//! the event stream's per-pod timeline.

/// `/timeline/{namespace}/{pod}` on the HTTP API: the pod's timeline as JSON (the
/// entries as `bpflet trace --json` prints them, with `sequence`).
pub async fn timeline_route(
    axum::extract::State(state): axum::extract::State<super::ApiState>,
    axum::extract::Path((namespace, pod)): axum::extract::Path<(String, String)>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let not_found = |msg: String| (axum::http::StatusCode::NOT_FOUND, msg).into_response();
    let Some(hub) = &state.timeline else {
        return not_found("no event stream in this agent\n".to_owned());
    };
    let Some(uid) = hub.pods().find(&namespace, &pod) else {
        return not_found(format!("pod {namespace}/{pod}: not running on this node\n"));
    };
    let (entries, dropped) = hub.timeline(&uid).unwrap_or_default();
    let events: Vec<serde_json::Value> = entries
        .iter()
        .map(|p| {
            let mut v = crate::trace::output::to_json(&p.event);
            if let Some(m) = v.as_object_mut() {
                m.insert("sequence".into(), p.sequence.into());
                if let Some(c) = p.pod.as_ref().and_then(|p| p.container_name.clone()) {
                    m.insert("container_name".into(), c.into());
                }
            }
            v
        })
        .collect();
    axum::Json(serde_json::json!({
        "namespace": namespace,
        "name": pod,
        "uid": uid,
        "runId": hub.run_id(),
        "dropped": dropped,
        "events": events,
    }))
    .into_response()
}
