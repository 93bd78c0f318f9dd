//! gRPC `LogSettings`, `TraceSetting` and `CudaSharedMemory*`: the same state and checks as
//! the HTTP endpoints (`crate::extensions`). A request with settings changes them and needs the
//! admin token; an empty request reads them.

use super::{authorize, Rpc};
use crate::error::to_status;
use crate::extensions::{
    check_log_settings, cuda_region_unknown, cuda_register_refused, parse_trace_field,
    trace_entries, LogSettings, Trace, TraceFields,
};
use crate::state::AppState;
use kiln_core::{Error, ErrorCode};
use kiln_protocol::inference as pb;
use pb::log_settings_request::setting_value::ParameterChoice as In;
use pb::log_settings_response::setting_value::ParameterChoice as Out;
use tonic::{Request, Response, Status};

fn invalid(m: String) -> Status {
    to_status(Error::new(ErrorCode::InvalidArgument, m))
}

fn log_response(s: &LogSettings) -> pb::LogSettingsResponse {
    let v = |p| pb::log_settings_response::SettingValue {
        parameter_choice: Some(p),
    };
    pb::LogSettingsResponse {
        settings: [
            ("log_file", v(Out::StringParam(s.log_file.clone()))),
            ("log_info", v(Out::BoolParam(s.log_info))),
            ("log_warning", v(Out::BoolParam(s.log_warning))),
            ("log_error", v(Out::BoolParam(s.log_error))),
            (
                "log_verbose_level",
                v(Out::Uint32Param(s.log_verbose_level)),
            ),
            ("log_format", v(Out::StringParam(s.log_format.clone()))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    }
}

/// `LogSettings`: reads the log settings, or changes those given.
pub fn log_settings(
    st: &AppState,
    r: Request<pb::LogSettingsRequest>,
) -> Rpc<pb::LogSettingsResponse> {
    let from = if r.get_ref().settings.is_empty() {
        None
    } else {
        Some(authorize(st, &r)?)
    };
    let log = st.extensions.log().map_err(to_status)?;
    let mut s = log.get();
    let Some(from) = from else {
        return Ok(Response::new(log_response(&s)));
    };
    for (k, v) in r.into_inner().settings {
        let wrong = |want: &str| invalid(format!("{k}: expected {want}"));
        let p = v.parameter_choice;
        match (k.as_str(), p) {
            ("log_file", Some(In::StringParam(x))) => s.log_file = x,
            ("log_format", Some(In::StringParam(x))) => s.log_format = x,
            ("log_info", Some(In::BoolParam(b))) => s.log_info = b,
            ("log_warning", Some(In::BoolParam(b))) => s.log_warning = b,
            ("log_error", Some(In::BoolParam(b))) => s.log_error = b,
            ("log_verbose_level", Some(In::Uint32Param(n))) => s.log_verbose_level = n,
            ("log_file" | "log_format", _) => return Err(wrong("a string")),
            ("log_info" | "log_warning" | "log_error", _) => return Err(wrong("a bool")),
            ("log_verbose_level", _) => return Err(wrong("a uint32")),
            _ => return Err(invalid(format!("unknown log setting '{k}'"))),
        }
    }
    check_log_settings(&s).map_err(to_status)?;
    log.set(&s)
        .map_err(|e| to_status(Error::new(ErrorCode::Internal, e)))?;
    tracing::info!(caller = %from, ?s, "log settings changed");
    Ok(Response::new(log_response(&log.get())))
}

fn trace_response(t: &Trace) -> pb::TraceSettingResponse {
    pb::TraceSettingResponse {
        settings: trace_entries(t)
            .into_iter()
            .map(|(k, value)| {
                (
                    k.to_string(),
                    pb::trace_setting_response::SettingValue { value },
                )
            })
            .collect(),
    }
}

/// `TraceSetting`: reads the trace settings (server-wide, or of `model_name`), or changes those
/// given; a setting with no value is cleared.
pub fn trace_setting(
    st: &AppState,
    r: Request<pb::TraceSettingRequest>,
) -> Rpc<pb::TraceSettingResponse> {
    let from = if r.get_ref().settings.is_empty() {
        None
    } else {
        Some(authorize(st, &r)?)
    };
    let r = r.into_inner();
    let model = Some(r.model_name.as_str()).filter(|m| !m.is_empty());
    if let Some(m) = model {
        st.version(m, "").map_err(to_status)?;
    }
    let Some(from) = from else {
        return Ok(Response::new(trace_response(
            &st.extensions.trace.get(model),
        )));
    };
    let (mut set, mut clear) = (TraceFields::default(), TraceFields::default());
    for (k, v) in r.settings {
        if v.value.is_empty() {
            let placeholder = if k == "trace_level" { "OFF" } else { "1" };
            parse_trace_field(&mut clear, &k, &[placeholder.to_string()]).map_err(to_status)?;
        } else {
            parse_trace_field(&mut set, &k, &v.value).map_err(to_status)?;
        }
    }
    let t = st.extensions.trace.update(model, set, clear);
    tracing::info!(caller = %from, model = model.unwrap_or(""), ?t, "trace settings changed");
    Ok(Response::new(trace_response(&t)))
}

/// `CudaSharedMemoryStatus`: no region is ever registered.
pub fn cuda_status(
    r: Request<pb::CudaSharedMemoryStatusRequest>,
) -> Rpc<pb::CudaSharedMemoryStatusResponse> {
    let name = r.into_inner().name;
    if !name.is_empty() {
        return Err(to_status(cuda_region_unknown(&name)));
    }
    Ok(Response::new(pb::CudaSharedMemoryStatusResponse::default()))
}

/// `CudaSharedMemoryRegister`: refused, there is no GPU.
pub fn cuda_register(
    st: &AppState,
    r: Request<pb::CudaSharedMemoryRegisterRequest>,
) -> Rpc<pb::CudaSharedMemoryRegisterResponse> {
    authorize(st, &r)?;
    Err(to_status(cuda_register_refused(&r.into_inner().name)))
}

/// `CudaSharedMemoryUnregister`: nothing to unregister.
pub fn cuda_unregister(
    st: &AppState,
    r: Request<pb::CudaSharedMemoryUnregisterRequest>,
) -> Rpc<pb::CudaSharedMemoryUnregisterResponse> {
    authorize(st, &r)?;
    Ok(Response::new(pb::CudaSharedMemoryUnregisterResponse {}))
}
