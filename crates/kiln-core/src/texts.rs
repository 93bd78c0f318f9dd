//! Error texts that clients match on, worded as Triton words them, in one table for the HTTP
//! and gRPC front ends so the two cannot drift. Each function returns the message only; the
//! caller picks the [`crate::ErrorCode`] (Kiln keeps its own status codes, see the README's
//! "Coming from Triton").

/// `[d0,d1,...]`, as Triton prints shapes and dims.
pub fn dims(d: &[i64]) -> String {
    let parts: Vec<String> = d.iter().map(i64::to_string).collect();
    format!("[{}]", parts.join(","))
}

/// `['a','b']`, as Triton prints a list of tensor names.
pub fn names<S: AsRef<str>>(n: &[S]) -> String {
    let parts: Vec<String> = n.iter().map(|s| format!("'{}'", s.as_ref())).collect();
    format!("[{}]", parts.join(","))
}

/// A model the server does not know (or that has no serving version).
pub fn unknown_model(model: &str) -> String {
    format!("Request for unknown model: '{model}' is not found")
}

/// A version of a known model that the server does not have.
pub fn unknown_version(model: &str, version: u64) -> String {
    format!("Request for unknown model: '{model}' version {version} is not found")
}

/// A version string that is not a non-negative integer.
pub fn bad_version_string(version: &str) -> String {
    format!(
        "failed to get model version from specified version string '{version}' \
         (details: stol), version should be an integral value > 0"
    )
}

/// gRPC: an input with `contents` in a request that also carries `raw_input_contents`.
pub fn contents_with_raw(input: &str, model: &str) -> String {
    format!(
        "contents field must not be specified when using raw_input_contents for '{input}' \
         for model '{model}'"
    )
}

/// A request without every input the model requires. `given` are the request's input names,
/// `missing` the required ones it lacks, `required` how many the model requires and `all`
/// how many it has (more than `required` when some are optional).
pub fn input_count(
    model: &str,
    required: usize,
    all: usize,
    given: &[&str],
    missing: &[&str],
) -> String {
    let expected = if required == all {
        format!("expected {all} inputs")
    } else {
        format!("expected number of inputs between {required} and {all}")
    };
    format!(
        "{expected} but got {} inputs for model '{model}'. Got input(s) {}, but missing \
         required input(s) {}. Please provide all required input(s).",
        given.len(),
        names(given),
        names(missing)
    )
}

/// An input whose shape does not match the model's (`expected` includes the batch dimension
/// as -1 when the model batches).
pub fn input_shape(
    input: &str,
    model: &str,
    expected: &[i64],
    got: &[i64],
    batched: bool,
) -> String {
    let note = if batched {
        "NOTE: Setting a non-zero max_batch_size in the model config requires a batch \
         dimension to be prepended to each input shape. If you want to specify the full \
         shape including the batch dim in your input dims config, try setting \
         max_batch_size to zero. See the model configuration docs for more info on \
         max_batch_size."
    } else {
        ""
    };
    format!(
        "unexpected shape for input '{input}' for model '{model}'. Expected {}, got {}. {note}",
        dims(expected),
        dims(got)
    )
}

/// An input whose datatype is not the model's (protocol spellings: `FP32`, `BYTES`).
pub fn input_datatype(input: &str, model: &str, got: &str, expected: &str) -> String {
    format!(
        "inference input '{input}' data-type is '{got}', but model '{model}' expects '{expected}'"
    )
}

/// A fixed-size input whose data is not the size its shape needs. `model` may be empty where
/// the decoder does not know it yet.
pub fn input_byte_size(input: &str, model: &str, expected: usize, got: usize) -> String {
    format!(
        "input byte size mismatch for input '{input}'{}. Expected {expected}, got {got}",
        for_model(model)
    )
}

/// An input given as values (JSON `data`, gRPC `contents`, BYTES elements) with a different
/// number of elements than its shape needs; Triton's text for BYTES inputs, with `string`
/// only for them. `model` may be empty where the decoder does not know it yet.
pub fn input_element_count(
    input: &str,
    model: &str,
    bytes: bool,
    expected: usize,
    got: usize,
) -> String {
    format!(
        "expected {expected} {}elements for inference input '{input}'{}, got {got}",
        if bytes { "string " } else { "" },
        for_model(model)
    )
}

fn for_model(model: &str) -> String {
    if model.is_empty() {
        String::new()
    } else {
        format!(" for model '{model}'")
    }
}

/// A shared-memory region that is not registered.
pub fn shm_unknown_region(region: &str) -> String {
    format!("Unable to find shared memory region: '{region}'")
}

/// An offset and size that run past the end of a registered region.
pub fn shm_out_of_bounds(region: &str) -> String {
    format!("Invalid offset + byte size for shared memory region: '{region}'")
}

/// A region registered under a name already in use.
pub fn shm_already_registered(region: &str) -> String {
    format!("shared memory region '{region}' already in manager")
}

/// Load or unload outside the explicit model-control mode.
pub const CONTROL_DISABLED: &str =
    "explicit model load / unload is not allowed if polling is enabled";

/// A load request's `config` parameter that is not a valid model configuration (Triton's
/// load failure prefix, which clients match on, then the reason).
pub fn invalid_config_override(model: &str, why: &str) -> String {
    format!("failed to load '{model}', Invalid config override: {why}")
}

/// A load request parameter that is neither `config` nor `file:<version>/<name>` (`kind`:
/// `string`, `int`, `bool`, `bytes`).
pub fn unrecognized_load_parameter(name: &str, kind: &str) -> String {
    format!("Unrecognized load parameter '{name}' with type '{kind}'")
}

/// Load of a model that is not in the repository.
pub fn load_unknown(model: &str) -> String {
    format!("failed to load '{model}', failed to poll from model repository")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triton_spellings() {
        assert_eq!(dims(&[-1, 4]), "[-1,4]");
        assert_eq!(dims(&[]), "[]");
        assert_eq!(names(&["a", "b"]), "['a','b']");
        assert_eq!(
            unknown_model("m"),
            "Request for unknown model: 'm' is not found"
        );
        assert_eq!(
            input_count("m", 2, 2, &["a"], &["b"]),
            "expected 2 inputs but got 1 inputs for model 'm'. Got input(s) ['a'], but \
             missing required input(s) ['b']. Please provide all required input(s)."
        );
        assert!(input_shape("x", "m", &[-1, 4], &[1, 3], true).starts_with(
            "unexpected shape for input 'x' for model 'm'. Expected [-1,4], got [1,3]. NOTE"
        ));
        assert_eq!(
            input_byte_size("x", "", 16, 12),
            "input byte size mismatch for input 'x'. Expected 16, got 12"
        );
    }
}
