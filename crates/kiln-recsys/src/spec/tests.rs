use super::*;

fn parse(s: &str) -> Result<RecsysSpec> {
    RecsysSpec::parse(&toml::from_str(s).unwrap())
}

#[test]
fn reads_features_and_tables() {
    let s = parse(
        r#"
        interaction = "dot"
        [[sparse]]
        name = "a"
        table = "t"
        max_ids = 3
        [[sparse]]
        name = "b"
        table = "t"
        max_ids = 2
        pooling = "mean"
        hash = "xxh3"
        buckets = 100
        [tables.t]
        storage = "f16"
        "#,
    )
    .unwrap();
    assert_eq!(s.tables.len(), 1);
    assert_eq!(s.tables[0].config.storage, StorageType::F16);
    assert_eq!(s.sparse[1].pooling, Pooling::Mean);
    assert_eq!(s.sparse[1].buckets, Some(100));
    assert_eq!(s.interaction, Interaction::Dot);
}

#[test]
fn errors_name_the_field() {
    let e = parse("interaction = \"concat\"\n[[sparse]]\nname=\"a\"\ntable=\"t\"\nmax_ids=0\n")
        .unwrap_err();
    assert!(e.message.contains("max_ids"), "{e:?}");
    let e = parse("interaction = \"cross\"\n").unwrap_err();
    assert!(e.message.contains("cross"), "{e:?}");
    let e = parse(
        "interaction = \"concat\"\n[[sparse]]\nname=\"a\"\ntable=\"t\"\nmax_ids=1\ndata_type=\"BYTES\"\n",
    )
    .unwrap_err();
    assert!(e.message.contains("xxh3"), "{e:?}");
    let base = "interaction = \"concat\"\n[[sparse]]\nname=\"a\"\ntable=\"t\"\nmax_ids=1\n";
    let e = parse(&format!("precision = \"fp16\"\n{base}")).unwrap_err();
    assert!(
        e.message.contains("precision") && e.message.contains("fp16"),
        "{e:?}"
    );
    assert_eq!(parse(base).unwrap().precision, Precision::Fp32);
    let s = parse(&format!("precision = \"auto\"\n{base}")).unwrap();
    assert_eq!(s.precision, Precision::Auto);
}

#[test]
fn table_layout() {
    let base = "interaction = \"concat\"\n[[sparse]]\nname=\"a\"\ntable=\"t\"\nmax_ids=1\n";
    assert_eq!(parse(base).unwrap().tables[0].layout, Layout::Hashed);
    let s = parse(&format!("{base}[table_defaults]\nlayout=\"direct\"\n")).unwrap();
    assert_eq!(s.tables[0].layout, Layout::Direct);
    let e = parse(&format!("{base}[tables.t]\nlayout=\"tree\"\n")).unwrap_err();
    assert!(e.message.contains("layout"), "{e:?}");
    let e = parse(&format!(
        "{base}[tables.t]\nlayout=\"direct\"\nmemory_cap_mb=64\n"
    ))
    .unwrap_err();
    assert!(e.message.contains("memory_cap_mb"), "{e:?}");
}

#[test]
fn non_finite_values_are_opt_in_per_table() {
    let base = "interaction = \"concat\"\n[[sparse]]\nname=\"a\"\ntable=\"t\"\nmax_ids=1\n\
                [[sparse]]\nname=\"b\"\ntable=\"u\"\nmax_ids=1\n";
    let s = parse(base).unwrap();
    assert!(s.tables.iter().all(|t| !t.config.allow_non_finite));
    let s = parse(&format!(
        "{base}[table_defaults]\nallow_non_finite = true\n[tables.u]\nallow_non_finite = false\n"
    ))
    .unwrap();
    let allow: Vec<_> = s
        .tables
        .iter()
        .map(|t| (t.name.as_str(), t.config.allow_non_finite))
        .collect();
    assert_eq!(allow, [("t", true), ("u", false)]);
}
