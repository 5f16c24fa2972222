//! The reserved keys of the connector asset's free-form `properties` and `privateProperties`.
//!
//! The operator's ownership markers are the private properties `dsp-mqtt.io/managed-by` and
//! `dsp-mqtt.io/owner`, which the connector reads as JSON-LD under the request's context
//! (`@vocab` = the EDC namespace): they are the IRIs `https://w3id.org/edc/v0.0.1/ns/dsp-mqtt.io/…`.
//! A user's key is reserved when it names such an IRI in any spelling JSON-LD (or the operator's
//! reading of the connector's answers) gives it:
//!
//! - the plain key `dsp-mqtt.io/owner` (expanded with `@vocab`);
//! - the full IRI `https://w3id.org/edc/v0.0.1/ns/dsp-mqtt.io/owner`;
//! - a compact IRI through a prefix the connector uses (`edc:`, `odrl:`: the operator strips those
//!   and their IRIs when it compares the connector's answers, so they would collide there too);
//! - a compact IRI, a term or a `@vocab` declared in the object's own `@context`
//!   (`{"@context": {"m": "https://w3id.org/edc/v0.0.1/ns/dsp-mqtt.io/"}, "m:owner": …}`), and
//!   keys lifted into the object by `@nest`.
//!
//! The object's own `@context` must also leave the operator's marker keys where they are (a
//! `@vocab` or term of the user's would move them), and must be inline: a remote context cannot
//! be checked. Where JSON-LD would treat a spelling one way or another (a term used as a prefix
//! without a gen-delim), the check assumes the reading that reaches the markers: a refusal costs a
//! rename, a miss costs the ownership marker.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::transfer::EDC_NAMESPACE;
use super::{PlanError, RESERVED_PROPERTY_PREFIX};
use crate::backends::{OWNER_KEY, OWNER_RESOURCE_KEY};

/// The ODRL namespace (the connector compacts with `odrl:` as well).
const ODRL_NAMESPACE: &str = "http://www.w3.org/ns/odrl/2/";

/// An active JSON-LD context, as far as key expansion needs it.
#[derive(Clone, Debug)]
struct Context {
    vocab: Option<String>,
    /// Term → IRI (`None`: mapped to null, or to a keyword other than `@nest`).
    terms: BTreeMap<String, Term>,
}

#[derive(Clone, Debug, PartialEq)]
enum Term {
    Iri(String),
    Nest,
    Null,
}

impl Context {
    /// The request's context (`@vocab` = EDC), plus the prefixes the connector compacts with.
    fn request() -> Self {
        let terms = BTreeMap::from([
            ("edc".to_owned(), Term::Iri(EDC_NAMESPACE.to_owned())),
            ("odrl".to_owned(), Term::Iri(ODRL_NAMESPACE.to_owned())),
        ]);
        Self { vocab: Some(EDC_NAMESPACE.to_owned()), terms }
    }

    /// What a key (or an IRI-valued term definition) expands to.
    fn expand(&self, key: &str) -> Term {
        if key.starts_with('@') {
            return if key == "@nest" { Term::Nest } else { Term::Null };
        }
        if let Some(term) = self.terms.get(key) {
            return term.clone();
        }
        if let Some((prefix, suffix)) = key.split_once(':') {
            if prefix == "_" || suffix.starts_with("//") {
                return Term::Iri(key.to_owned());
            }
            return match self.terms.get(prefix) {
                Some(Term::Iri(iri)) => Term::Iri(format!("{iri}{suffix}")),
                _ => Term::Iri(key.to_owned()),
            };
        }
        match &self.vocab {
            Some(vocab) => Term::Iri(format!("{vocab}{key}")),
            None => Term::Null,
        }
    }

    /// Applies a local `@context` (object, array, or null); `Err` says why it cannot be checked.
    fn apply(&mut self, local: &Value) -> Result<(), String> {
        match local {
            Value::Null => {
                *self = Context { vocab: None, terms: BTreeMap::new() };
                Ok(())
            }
            Value::Array(items) => items.iter().try_for_each(|item| self.apply(item)),
            Value::Object(definitions) => {
                if let Some(import) = definitions.get("@import") {
                    return Err(format!("its @context imports {import}, a remote context the operator cannot check"));
                }
                if let Some(vocab) = definitions.get("@vocab") {
                    self.vocab = match vocab {
                        Value::String(v) => match self.expand_local(v, definitions, &mut BTreeSet::new()) {
                            Term::Iri(iri) => Some(iri),
                            _ => None,
                        },
                        _ => None,
                    };
                }
                let mut defined = BTreeMap::new();
                for term in definitions.keys().filter(|k| !k.starts_with('@')) {
                    let value = self.define(term, definitions, &mut BTreeSet::new());
                    defined.insert(term.clone(), value);
                }
                self.terms.extend(defined);
                Ok(())
            }
            other => Err(format!("its @context is {other}, a remote context the operator cannot check")),
        }
    }

    /// The definition of `term` in the local context `definitions` (which may use one another).
    fn define(&self, term: &str, definitions: &Map<String, Value>, visiting: &mut BTreeSet<String>) -> Term {
        if !visiting.insert(term.to_owned()) {
            return Term::Null; // A cycle: JSON-LD refuses the context; nothing to reach.
        }
        let target = match definitions.get(term) {
            Some(Value::String(iri)) => Some(iri.as_str()),
            Some(Value::Object(expanded)) => {
                match expanded.get("@id").or_else(|| expanded.get("@reverse")) {
                    Some(Value::String(iri)) => Some(iri.as_str()),
                    Some(_) => return Term::Null,
                    // No @id: the term itself, expanded.
                    None => None,
                }
            }
            Some(_) => return Term::Null,
            None => unreachable!("only defined terms"),
        };
        let term_iri = match target {
            Some(iri) => self.expand_local(iri, definitions, visiting),
            None => self.expand_local_without(term, definitions, visiting),
        };
        visiting.remove(term);
        term_iri
    }

    /// Expands `value` where terms of the local context being defined take precedence.
    fn expand_local(&self, value: &str, definitions: &Map<String, Value>, visiting: &mut BTreeSet<String>) -> Term {
        if value.starts_with('@') {
            return self.expand(value);
        }
        if definitions.contains_key(value) && !visiting.contains(value) {
            return self.define(value, definitions, visiting);
        }
        self.expand_local_without(value, definitions, visiting)
    }

    /// Like [`Self::expand_local`], without looking `value` itself up as a term.
    fn expand_local_without(
        &self,
        value: &str,
        definitions: &Map<String, Value>,
        visiting: &mut BTreeSet<String>,
    ) -> Term {
        if let Some((prefix, suffix)) = value.split_once(':')
            && prefix != "_"
            && !suffix.starts_with("//")
            && definitions.contains_key(prefix)
            && !visiting.contains(prefix)
        {
            return match self.define(prefix, definitions, visiting) {
                Term::Iri(iri) => Term::Iri(format!("{iri}{suffix}")),
                _ => Term::Iri(value.to_owned()),
            };
        }
        let mut without = self.clone();
        without.terms.remove(value);
        without.expand(value)
    }
}

/// Whether an IRI is one of the operator's markers' (also as the operator reads the connector's
/// answers, with the EDC and ODRL namespaces stripped).
fn is_reserved(name: &str) -> bool {
    let stripped = [EDC_NAMESPACE, "edc:", ODRL_NAMESPACE, "odrl:"]
        .iter()
        .find_map(|ns| name.strip_prefix(ns).filter(|rest| !rest.is_empty()))
        .unwrap_or(name);
    stripped.starts_with(RESERVED_PROPERTY_PREFIX)
}

/// Refuses a `properties`/`privateProperties` object (spec field `field`) that names one of the
/// operator's markers in any spelling, or whose own `@context` moves the markers (only checked
/// where `markers` is set: the object the markers are added to).
pub fn check_reserved(field: &'static str, object: &Map<String, Value>, markers: bool) -> Result<(), PlanError> {
    let refuse = |key: &str, detail: String| PlanError::ReservedProperty { field, key: key.to_owned(), detail };
    let mut context = Context::request();
    if let Some(local) = object.get("@context") {
        context.apply(local).map_err(|detail| refuse("@context", detail))?;
        if markers {
            for marker in [OWNER_KEY, OWNER_RESOURCE_KEY] {
                let expected = format!("{EDC_NAMESPACE}{marker}");
                let got = context.expand(marker);
                if got != Term::Iri(expected.clone()) {
                    let got = match got {
                        Term::Iri(iri) => format!("\"{iri}\""),
                        _ => "nothing".to_owned(),
                    };
                    return Err(refuse(
                        "@context",
                        format!(
                            "its @context makes the operator's marker \"{marker}\" expand to {got} instead of \"{expected}\""
                        ),
                    ));
                }
            }
        }
    }
    check_keys(object, &context).map_err(|(key, detail)| refuse(&key, detail))
}

fn check_keys(object: &Map<String, Value>, context: &Context) -> Result<(), (String, String)> {
    for (key, value) in object {
        if key == "@context" {
            continue;
        }
        // Checked literally too: the operator strips the namespaces from the connector's answers.
        if is_reserved(key) {
            return Err((
                key.clone(),
                format!("the key \"{key}\" names the connector property \"{EDC_NAMESPACE}{}\"", strip(key)),
            ));
        }
        match context.expand(key) {
            Term::Iri(iri) if is_reserved(&iri) => {
                return Err((key.clone(), format!("the key \"{key}\" expands to \"{iri}\"")));
            }
            Term::Nest => {
                // Nested keys belong to this object.
                let nested: Vec<&Map<String, Value>> = match value {
                    Value::Object(o) => vec![o],
                    Value::Array(items) => items.iter().filter_map(Value::as_object).collect(),
                    _ => Vec::new(),
                };
                for inner in nested {
                    check_keys(inner, context)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn strip(key: &str) -> &str {
    [EDC_NAMESPACE, "edc:", ODRL_NAMESPACE, "odrl:"].iter().find_map(|ns| key.strip_prefix(ns)).unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(object: Value) -> Result<(), PlanError> {
        check_reserved("spec.privateProperties", object.as_object().unwrap(), true)
    }

    fn refused(object: Value) -> String {
        let e = check(object.clone()).expect_err(&format!("{object} must be refused"));
        assert_eq!(e.reason(), "ReservedProperty");
        e.to_string()
    }

    #[test]
    fn every_spelling_of_a_marker_key_is_refused() {
        let ns = EDC_NAMESPACE;
        let spellings = [
            // Plain, as the operator writes it.
            json!({"dsp-mqtt.io/owner": "x"}),
            json!({"dsp-mqtt.io/managed-by": "x"}),
            json!({"dsp-mqtt.io/anything-else": "x"}),
            // The full IRI.
            json!({format!("{ns}dsp-mqtt.io/owner"): "x"}),
            // The prefixes the connector compacts with (and the operator strips).
            json!({"edc:dsp-mqtt.io/owner": "x"}),
            json!({"odrl:dsp-mqtt.io/owner": "x"}),
            json!({"http://www.w3.org/ns/odrl/2/dsp-mqtt.io/owner": "x"}),
            // A prefix declared in the object's own context, for the namespace or the marker folder.
            json!({"@context": {"e": ns}, "e:dsp-mqtt.io/owner": "x"}),
            json!({"@context": {"m": format!("{ns}dsp-mqtt.io/")}, "m:owner": "x"}),
            json!({"@context": {"m": {"@id": format!("{ns}dsp-mqtt.io/")}}, "m:owner": "x"}),
            // A prefix declared through another one of the same context, or a compact value.
            json!({"@context": {"m": "e:dsp-mqtt.io/", "e": ns}, "m:owner": "x"}),
            json!({"@context": {"m": "edc:dsp-mqtt.io/"}, "m:owner": "x"}),
            // A term naming the marker, plainly or vocabulary-relative.
            json!({"@context": {"who": format!("{ns}dsp-mqtt.io/owner")}, "who": "x"}),
            json!({"@context": {"who": "dsp-mqtt.io/owner"}, "who": "x"}),
            json!({"@context": {"who": {"@reverse": "dsp-mqtt.io/owner"}}, "who": "x"}),
            // A @vocab of the object's own.
            json!({"@context": [{"@vocab": format!("{ns}dsp-mqtt.io/")}], "owner": "x"}),
            // Lifted into the object by @nest.
            json!({"@nest": {"dsp-mqtt.io/owner": "x"}}),
            json!({"@context": {"n": "@nest", "m": format!("{ns}dsp-mqtt.io/")}, "n": [{"m:owner": "x"}]}),
        ];
        for spelling in spellings {
            let text = refused(spelling);
            assert!(text.contains("reserved for the operator's ownership markers"), "{text}");
        }
        let text = refused(json!({"@context": {"m": format!("{ns}dsp-mqtt.io/")}, "m:owner": "x"}));
        assert_eq!(
            text,
            "spec.privateProperties.m:owner: the key \"m:owner\" expands to \"https://w3id.org/edc/v0.0.1/ns/dsp-mqtt.io/owner\"; \
             keys under \"dsp-mqtt.io/\" of the connector's vocabulary are reserved for the operator's ownership markers \
             in every JSON-LD spelling (plain, prefixed, full IRI, or through the object's own @context): \
             rename the key or change the object's @context"
        );
    }

    #[test]
    fn a_context_that_moves_the_markers_or_cannot_be_checked_is_refused() {
        for context in [
            json!({"@vocab": "https://example.com/"}),
            json!(null),
            json!({"dsp-mqtt.io/owner": "https://example.com/owner"}),
            json!("https://example.com/context.jsonld"),
            json!({"@import": "https://example.com/context.jsonld"}),
        ] {
            let text = refused(json!({"@context": context, "name": "x"}));
            assert!(text.starts_with("spec.privateProperties.@context: its @context"), "{text}");
        }
        // In public properties the markers are not added: only the keys count.
        let public = json!({"@context": {"@vocab": "https://example.com/"}, "name": "x"});
        assert!(check_reserved("spec.properties", public.as_object().unwrap(), false).is_ok());
    }

    #[test]
    fn other_keys_and_contexts_pass() {
        for fine in [
            json!({"name": "x", "dsp-mqtt:topic": "a/b", "oauth2:tokenUrl": "https://kc/t"}),
            json!({"dsp-mqtt.iox/owner": "x", "other/dsp-mqtt.io/owner": "x", "https://example.com/dsp-mqtt.io/owner": "x"}),
            // An unknown prefix makes an absolute IRI of its own scheme.
            json!({"m:dsp-mqtt.io/owner": "x"}),
            json!({"@context": {"dct": "http://purl.org/dc/terms/"}, "dct:title": "x"}),
            // Nested objects are other nodes: their keys are not the markers.
            json!({"nested": {"dsp-mqtt.io/owner": "x"}}),
        ] {
            assert_eq!(check(fine.clone()), Ok(()), "{fine}");
        }
    }
}
