//! How a `config.pbtxt` model is scheduled: `dynamic_batching`, `instance_group`,
//! `model_warmup`, and an ensemble's `ensemble_scheduling` as a Kiln pipeline.

use super::convert::{data_type, refuse, unsupported};
use crate::inference as pb;
use kiln_core::config::{DynamicBatching, InstanceGroup, WarmupInput, WarmupSample};
use kiln_core::{ModelConfig, Result};
use std::collections::BTreeMap;

/// Kiln's scheduler settings of a `dynamic_batching` block.
///
/// Triton's `max_queue_size: 0` (unbounded) keeps Kiln's bounded default queue, and a timeout
/// in microseconds is rounded up to whole milliseconds. Requests may always set their own
/// timeout, and each request is answered on its own, so `allow_timeout_override` and
/// `preserve_ordering` change nothing.
pub(super) fn dynamic_batching(
    db: &pb::ModelDynamicBatching,
    max_batch_size: i32,
    file: &str,
) -> Result<DynamicBatching> {
    let mut k = DynamicBatching {
        max_queue_delay_us: db.max_queue_delay_microseconds,
        ..DynamicBatching::default()
    };
    for &p in &db.preferred_batch_size {
        if p <= 0 || p > max_batch_size {
            return Err(refuse(
                file,
                "dynamic_batching.preferred_batch_size",
                format!("{p} is outside 1..=max_batch_size ({max_batch_size})"),
            ));
        }
        k.preferred_batch_sizes.push(p as u32);
    }
    if db.priority_levels > 0 {
        k.priority_levels = u32::try_from(db.priority_levels).map_err(|_| {
            refuse(
                file,
                "dynamic_batching.priority_levels",
                format!("{} is too many", db.priority_levels),
            )
        })?;
    }
    if db.default_priority_level > 0 {
        if db.default_priority_level > u64::from(k.priority_levels) {
            return Err(refuse(
                file,
                "dynamic_batching.default_priority_level",
                format!(
                    "{} is outside 1..={}",
                    db.default_priority_level, k.priority_levels
                ),
            ));
        }
        k.default_priority = Some(db.default_priority_level as u32);
    }
    if !db.priority_queue_policy.is_empty() {
        return Err(unsupported(
            file,
            "dynamic_batching.priority_queue_policy",
            "every priority level shares default_queue_policy",
        ));
    }
    if let Some(q) = &db.default_queue_policy {
        let at = "dynamic_batching.default_queue_policy";
        if q.timeout_action == pb::model_queue_policy::TimeoutAction::Delay as i32 {
            return Err(unsupported(
                file,
                &format!("{at}.timeout_action"),
                "a request past its timeout is rejected (REJECT)",
            ));
        }
        k.default_timeout_ms = q.default_timeout_microseconds.div_ceil(1000);
        if q.max_queue_size > 0 {
            k.max_queue_size = q.max_queue_size as usize;
        }
    }
    Ok(k)
}

/// Kiln's instances of the `instance_group` list: the counts of the CPU groups added up
/// (`count: 0` is one instance, as in Triton). GPU groups and device placement are refused.
pub(super) fn instance_groups(
    groups: &[pb::ModelInstanceGroup],
    file: &str,
) -> Result<InstanceGroup> {
    use pb::model_instance_group::Kind;
    if groups.is_empty() {
        return Ok(InstanceGroup::default());
    }
    let mut count = 0u32;
    for (i, g) in groups.iter().enumerate() {
        let at = format!("instance_group[{i}]");
        match Kind::try_from(g.kind) {
            Ok(Kind::Auto | Kind::Cpu) => {}
            Ok(Kind::Gpu) => {
                return Err(refuse(
                    file,
                    &format!("{at}.kind"),
                    "KIND_GPU: this Kiln build runs models on the CPU only; use KIND_CPU",
                ))
            }
            Ok(Kind::Model) => {
                return Err(unsupported(
                    file,
                    &format!("{at}.kind"),
                    "KIND_MODEL: Kiln places instances itself; use KIND_CPU",
                ))
            }
            Err(_) => return Err(refuse(file, &format!("{at}.kind"), "unknown kind")),
        }
        let placed: [(&str, bool); 6] = [
            ("gpus", !g.gpus.is_empty()),
            ("rate_limiter", g.rate_limiter.is_some()),
            ("secondary_devices", !g.secondary_devices.is_empty()),
            ("profile", !g.profile.is_empty()),
            ("passive", g.passive),
            ("host_policy", !g.host_policy.is_empty()),
        ];
        if let Some((field, _)) = placed.iter().find(|(_, set)| *set) {
            return Err(unsupported(
                file,
                &format!("{at}.{field}"),
                "instances are CPU threads with no placement",
            ));
        }
        let n = u32::try_from(g.count)
            .map_err(|_| refuse(file, &format!("{at}.count"), "must not be negative"))?;
        count = count.saturating_add(n.max(1));
    }
    Ok(InstanceGroup {
        count,
        ..InstanceGroup::default()
    })
}

/// Kiln's warm-up samples of `model_warmup` (`count: 0` runs a sample once, as in Triton).
pub(super) fn warmup(samples: &[pb::ModelWarmup], file: &str) -> Result<Vec<WarmupSample>> {
    use pb::model_warmup::input::InputDataType;
    let mut out = Vec::with_capacity(samples.len());
    for (i, s) in samples.iter().enumerate() {
        let mut inputs = BTreeMap::new();
        for (name, x) in &s.inputs {
            let at = format!("model_warmup[{i}].inputs[{name}]");
            let mut input = WarmupInput {
                dims: x.dims.clone(),
                data_type: Some(data_type(x.data_type, &format!("{at}.data_type"), file)?),
                zero_data: false,
                random_data: false,
                input_data_file: None,
            };
            match &x.input_data_type {
                Some(InputDataType::ZeroData(z)) => input.zero_data = *z,
                Some(InputDataType::RandomData(r)) => input.random_data = *r,
                Some(InputDataType::InputDataFile(f)) => input.input_data_file = Some(f.clone()),
                None => {
                    return Err(refuse(
                        file,
                        &at,
                        "give zero_data, random_data or input_data_file",
                    ))
                }
            }
            inputs.insert(name.clone(), input);
        }
        out.push(WarmupSample {
            name: s.name.clone(),
            batch_size: s.batch_size,
            count: s.count.max(1),
            inputs,
        });
    }
    Ok(out)
}

/// Makes `k` the pipeline of an ensemble: one `[[step]]` per ensemble step (named after its
/// model, with the step's position added when a model is used twice). A batching ensemble
/// (`max_batch_size > 0`) becomes a pipeline of whole tensors whose shapes lead with a
/// variable batch dimension, as the ensemble's tensors do; its steps batch at their models.
pub(super) fn ensemble(c: &pb::ModelConfig, k: &mut ModelConfig, file: &str) -> Result<()> {
    let own: [(&str, bool); 3] = [
        ("dynamic_batching", c.dynamic_batching.is_some()),
        ("instance_group", !c.instance_group.is_empty()),
        ("model_warmup", !c.model_warmup.is_empty()),
    ];
    if let Some((field, _)) = own.iter().find(|(_, set)| *set) {
        return Err(refuse(
            file,
            field,
            "an ensemble runs its steps' models, which are scheduled by their own configurations",
        ));
    }
    if k.max_batch_size > 0 {
        for t in k.input.iter_mut().chain(k.output.iter_mut()) {
            t.dims.insert(0, -1);
        }
        k.max_batch_size = 0;
    }
    let steps = c
        .ensemble_scheduling
        .as_ref()
        .map(|e| e.step.as_slice())
        .unwrap_or_default();
    if steps.is_empty() {
        return Err(refuse(
            file,
            "ensemble_scheduling.step",
            "an ensemble needs at least one step",
        ));
    }
    let uses = |m: &str| steps.iter().filter(|s| s.model_name == m).count();
    k.step = Vec::with_capacity(steps.len());
    for (i, s) in steps.iter().enumerate() {
        let at = format!("ensemble_scheduling.step[{i}]");
        if s.model_name.is_empty() {
            return Err(refuse(file, &format!("{at}.model_name"), "must be set"));
        }
        if !s.model_namespace.is_empty() {
            return Err(unsupported(
                file,
                &format!("{at}.model_namespace"),
                "model names are not namespaced",
            ));
        }
        let name = if uses(&s.model_name) > 1 {
            format!("{}_{i}", s.model_name)
        } else {
            s.model_name.clone()
        };
        let mut t = toml::Table::new();
        t.insert("name".into(), name.into());
        t.insert("model".into(), s.model_name.clone().into());
        match s.model_version {
            -1 => {}
            v if v >= 1 => {
                t.insert("version".into(), v.into());
            }
            v => {
                return Err(refuse(
                    file,
                    &format!("{at}.model_version"),
                    format!("{v}: give a version number, or -1 for the model's latest"),
                ))
            }
        }
        let map = |m: &std::collections::BTreeMap<String, String>| -> toml::Value {
            toml::Value::Table(
                m.iter()
                    .map(|(a, b)| (a.clone(), toml::Value::String(b.clone())))
                    .collect(),
            )
        };
        t.insert("input_map".into(), map(&sorted(&s.input_map)));
        t.insert("output_map".into(), map(&sorted(&s.output_map)));
        k.step.push(t);
    }
    Ok(())
}

/// A map in name order (the generated step maps are hash maps).
fn sorted(m: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    m.iter().map(|(a, b)| (a.clone(), b.clone())).collect()
}
