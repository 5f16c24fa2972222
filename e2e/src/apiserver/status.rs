//! Error answers in the API server's shape: a `Status` object (`kind: Status`, `status: Failure`,
//! `reason`, `details`, `code`) with the HTTP status equal to `code`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::schema::FieldError;

/// A refused request, answered as a `Status` body.
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

/// What a refusal names: the resource (`plural`, `group`) and object (`name`).
pub(crate) struct Target<'a> {
    pub group: &'a str,
    pub plural: &'a str,
    pub name: &'a str,
}

impl Target<'_> {
    /// `mqttassets.dsp-mqtt.io`, or `secrets` for the core group (the server's GroupResource).
    fn group_resource(&self) -> String {
        if self.group.is_empty() { self.plural.to_owned() } else { format!("{}.{}", self.plural, self.group) }
    }
    fn details(&self) -> Value {
        json!({"name": self.name, "group": self.group, "kind": self.plural})
    }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None }
    }

    pub fn not_found(t: Target<'_>) -> Self {
        let mut e = Self::new(404, "NotFound", format!("{} \"{}\" not found", t.group_resource(), t.name));
        e.details = Some(t.details());
        e
    }

    /// A path the server has no handler for (unknown group, version or resource).
    pub fn no_such_resource() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
    }

    pub fn already_exists(t: Target<'_>) -> Self {
        let mut e = Self::new(409, "AlreadyExists", format!("{} \"{}\" already exists", t.group_resource(), t.name));
        e.details = Some(t.details());
        e
    }

    pub fn conflict(t: Target<'_>, why: &str) -> Self {
        let mut e = Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} \"{}\": {why}", t.group_resource(), t.name),
        );
        e.details = Some(t.details());
        e
    }

    /// The message the server gives for a stale `resourceVersion`.
    pub fn stale(t: Target<'_>) -> Self {
        Self::conflict(t, "the object has been modified; please apply your changes to the latest version and try again")
    }

    /// 422 with one cause per field, `<Kind>.<group> "<name>" is invalid: <path>: <message>, …`.
    pub fn invalid(kind: &str, group: &str, name: &str, errors: &[FieldError]) -> Self {
        let qualified = if group.is_empty() { kind.to_owned() } else { format!("{kind}.{group}") };
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let joined = if list.len() == 1 { list[0].clone() } else { format!("[{}]", list.join(", ")) };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": cause_reason(&e.message), "message": e.message, "field": e.path}))
            .collect();
        let mut out = Self::new(422, "Invalid", format!("{qualified} \"{name}\" is invalid: {joined}"));
        out.details = Some(json!({"name": name, "group": group, "kind": kind, "causes": causes}));
        out
    }

    /// 422 for a patch that cannot be applied (a failed JSON Patch `test`, a missing path): the
    /// server's generic answer, with the reason as its only cause.
    pub fn unprocessable(why: &str) -> Self {
        let mut e = Self::new(422, "Invalid", "the server rejected our request due to an error in our request");
        e.details = Some(json!({
            "name": "", "group": "", "kind": "",
            "causes": [{"reason": "UnexpectedServerResponse", "message": why}],
        }));
        e
    }

    /// 422 for invalid request options (`CreateOptions`, `PatchOptions`, …).
    pub fn invalid_options(kind: &str, field: &str, message: &str) -> Self {
        Self::invalid(kind, "meta.k8s.io", "", &[FieldError { path: field.into(), message: message.into() }])
    }

    /// 409 for a server-side apply that would change fields other managers own; `conflicts` are
    /// (field, manager as printed), in the real server's wording.
    pub fn apply_conflicts(t: Target<'_>, conflicts: &[(String, String)]) -> Self {
        let message = if let [(path, manager)] = conflicts {
            format!("Apply failed with 1 conflict: conflict with {manager}: {path}")
        } else {
            let mut managers: Vec<&String> = conflicts.iter().map(|(_, m)| m).collect();
            managers.sort();
            managers.dedup();
            let mut lines = Vec::new();
            for manager in managers {
                lines.push(format!("conflicts with {manager}:"));
                lines.extend(conflicts.iter().filter(|(_, m)| m == manager).map(|(p, _)| format!("- {p}")));
            }
            format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
        };
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(path, manager)| {
                json!({"reason": "FieldManagerConflict", "message": format!("conflict with {manager}"), "field": path})
            })
            .collect();
        let mut e = Self::new(409, "Conflict", message);
        let mut details = t.details();
        details["causes"] = json!(causes);
        e.details = Some(details);
        e
    }

    /// 500, for what the real server's storage refuses without a more specific status.
    pub fn internal(message: &str) -> Self {
        let mut e = Self::new(500, "InternalError", format!("Internal error occurred: {message}"));
        e.details = Some(json!({"causes": [{"message": message}]}));
        e
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
    }

    pub fn unsupported_media_type(content_type: &str, accepted: &[&str]) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                if accepted.is_empty() { content_type.to_owned() } else { accepted.join(", ") }
            ),
        )
    }

    /// 406: no media type the client accepts can be served.
    pub fn not_acceptable() -> Self {
        Self::new(406, "NotAcceptable", "the server was unable to respond with a content type that the client supports")
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// The `Status` object itself (also the `object` of a watch `ERROR` event).
    pub fn status_body(&self) -> Value {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            body["details"] = details.clone();
        }
        body
    }
}

/// The server's cause reasons, from the field error's type (the start of its message).
fn cause_reason(message: &str) -> &'static str {
    if message.starts_with("Required value") {
        "FieldValueRequired"
    } else if message.starts_with("Forbidden") {
        "FieldValueForbidden"
    } else if message.starts_with("Unsupported value") {
        "FieldValueNotSupported"
    } else if message.starts_with("Duplicate value") {
        "FieldValueDuplicate"
    } else if message.starts_with("Too long") || message.starts_with("Too many") {
        "FieldValueTooLong"
    } else {
        "FieldValueInvalid"
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(self.status_body())).into_response()
    }
}

/// A `Status` for success (what a DELETE of a built-in kind answers once the object is gone).
pub(crate) fn success(group: &str, plural: &str, name: &str, uid: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": group, "kind": plural, "uid": uid},
    })
}
