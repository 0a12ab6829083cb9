//! Flag parsing as upstream's manifests and k8s.io/apiserver's flags use it.

use std::time::Duration;

use super::{go_bool, go_duration, normalise_args, Args};

#[test]
fn upstream_db_environment_selects_postgres_with_quoted_values() {
    let args = Args::try_from_args(["reports-server"]).unwrap();
    let env = |name: &str| match name {
        "DB_HOST" => Some("db.example".to_string()),
        "DB_PORT" => Some("5433".to_string()),
        "DB_USER" => Some("reports".to_string()),
        "DB_PASSWORD" => Some("it's a \\secret".to_string()),
        "DB_DATABASE" => Some("reportsdb".to_string()),
        _ => None,
    };
    let url = args.storage_url_from(env);
    assert_eq!(
        url,
        "host='db.example' port='5433' user='reports' password='it\\'s a \\\\secret' dbname='reportsdb'"
    );
    let config: tokio_postgres::Config = url.parse().unwrap();
    assert_eq!(config.get_password(), Some("it's a \\secret".as_bytes()));
    assert_eq!(config.get_ports(), &[5433]);
}

#[test]
fn storage_flag_wins_and_default_is_the_embedded_file() {
    let env = |name: &str| (name == "DB_HOST").then(|| "db".to_string());
    let args = Args::try_from_args(["reports-server", "--storage", "sqlite::memory:"]).unwrap();
    assert_eq!(args.storage_url_from(env), "sqlite::memory:");
    let args = Args::try_from_args(["reports-server"]).unwrap();
    assert_eq!(args.storage_url_from(|_| None), "sqlite://reports-server.db");
}

#[test]
fn upstream_manifest_arguments_parse_with_one_warning_naming_the_inert_ones() {
    let args =
        Args::try_from_args(std::iter::once("reports-server").chain(super::UPSTREAM_CHART_ARGS)).unwrap();
    assert_eq!(args.secure_port, 4443);
    assert_eq!(args.dbsslmode.as_deref(), Some("disable"));
    assert_eq!(
        (args.dbsslrootcert.as_ref(), args.dbsslcert.as_ref(), args.dbsslkey.as_ref()),
        (None, None, None)
    );
    assert_eq!(args.clustername, None, "an empty value means unset");
    assert_eq!(args.storereports, Some(true));
    let settings = args.postgres_settings().unwrap();
    assert!(settings.ssl_root_cert.is_none() && settings.cluster_name.is_none());
    // In a cluster; standalone, the cluster flags are named too.
    let standalone = args.unimplemented_flags(true);
    assert!(standalone[0].contains("--servicename (no cluster)"), "{standalone:?}");
    let warnings = args.unimplemented_flags(false);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    for flag in ["--clusterrolename", "--cert-dir"] {
        assert!(warnings[0].contains(flag), "{flag} named in {warnings:?}");
    }
    for honoured in [
        "--dbsslmode",
        "--secure-port",
        "--storereports",
        "--clustername",
        "--dbsslrootcert",
        "--servicename",
        "--servicens",
        "--authorization-always-allow-paths",
    ] {
        assert!(!warnings[0].contains(honoured), "{honoured} is honoured: {warnings:?}");
    }
}

#[test]
fn generic_apiserver_and_klog_flags_parse() {
    let line = [
        "reports-server",
        "--authentication-kubeconfig=/k",
        "--authorization-kubeconfig",
        "/k",
        "--kubeconfig=/k",
        "--requestheader-allowed-names=front-proxy-client,aggregator",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        "--requestheader-client-ca-file=/ca",
        "--client-ca-file=/ca",
        "--authentication-skip-lookup",
        "--authentication-tolerate-lookup-failure=false",
        "--authentication-token-webhook-cache-ttl=10s",
        "--authorization-webhook-cache-authorized-ttl=5m",
        "--authorization-webhook-cache-unauthorized-ttl=1m30s",
        "--apiservicereconcileinterval=10s",
        "--audit-log-path=-",
        "--audit-log-maxage=7",
        "--audit-log-batch-max-wait=500ms",
        "--audit-webhook-batch-throttle-qps=10.5",
        "--tls-cipher-suites=TLS_AES_128_GCM_SHA256,TLS_AES_256_GCM_SHA384",
        "--tls-min-version=VersionTLS12",
        "--tls-sni-cert-key=a.crt,a.key:a.example",
        "--profiling=false",
        "--skipmigration=true",
        "--etcd=false",
        "--etcdEndpoints=",
        "-v=2",
        "--vmodule=x=3",
        "--logtostderr",
        "--log_dir=/tmp",
        "--alsologtostderr=true",
        "--logging-format=json",
        "--bind-address=127.0.0.1",
    ];
    let args = Args::try_from_args(line).unwrap();
    assert_eq!(args.log_format, "json");
    assert_eq!(args.inert.verbosity, Some(2));
    assert_eq!(args.cluster.requestheader_allowed_names, ["front-proxy-client", "aggregator"]);
    assert_eq!(args.cluster.authorization_webhook_cache_unauthorized_ttl, Some(Duration::from_secs(90)));
    let warning = &args.unimplemented_flags(false)[0];
    for flag in ["--audit-log-path", "--v", "--log-dir", "--profiling"] {
        assert!(warning.contains(flag), "{flag}: {warning}");
    }
    for honoured in [
        "--logtostderr",
        "--logging-format",
        "--etcd",
        "--skipmigration",
        "--bind-address",
        "--kubeconfig",
        "--requestheader-client-ca-file",
    ] {
        assert!(!warning.contains(honoured), "{honoured}: {warning}");
    }
    // `--v 3` and `-v 3` work too; an unknown flag is still refused.
    assert_eq!(Args::try_from_args(["r", "--v", "3"]).unwrap().inert.verbosity, Some(3));
    assert!(Args::try_from_args(["r", "--no-such-flag"]).is_err());
    assert!(Args::try_from_args(["r", "--storereports=maybe"]).is_err());
    assert!(Args::try_from_args(["r", "--apiservicereconcileinterval=10"]).is_err());
}

#[test]
fn no_warning_without_inert_flags_and_version_is_reported() {
    let args = Args::try_from_args(["r", "--storage", "sqlite::memory:", "--storereports"]).unwrap();
    assert!(args.unimplemented_flags(true).is_empty());
    assert_eq!(Args::try_from_args(["r", "--version"]).unwrap().version, Some(true));
    assert_eq!(Args::try_from_args(["r", "--version=false"]).unwrap().version, Some(false));
}

#[test]
fn cert_dir_supplies_the_serving_certificate_when_both_files_exist() {
    let dir = tempfile::tempdir().unwrap();
    let flag = format!("--cert-dir={}", dir.path().display());
    let args = Args::try_from_args(["r", flag.as_str()]).unwrap();
    assert!(args.tls_cert_file.is_none() && args.unimplemented_flags(true)[0].contains("--cert-dir"));
    std::fs::write(dir.path().join("apiserver.crt"), "").unwrap();
    std::fs::write(dir.path().join("apiserver.key"), "").unwrap();
    let args = Args::try_from_args(["r", flag.as_str()]).unwrap();
    assert_eq!(args.tls_cert_file, Some(dir.path().join("apiserver.crt")));
    assert_eq!(args.tls_private_key_file, Some(dir.path().join("apiserver.key")));
    assert!(args.unimplemented_flags(true).is_empty());
}

#[test]
fn go_values() {
    assert_eq!(go_duration("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(go_duration("1h2m3.5s"), Ok(Duration::from_millis(3_723_500)));
    assert_eq!(go_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(go_duration("0"), Ok(Duration::ZERO));
    assert_eq!(go_duration("7\u{b5}s"), Ok(Duration::from_micros(7)));
    for bad in ["", "10", "s", "1d", "-1s", "1.2.3s"] {
        assert!(go_duration(bad).is_err(), "{bad}");
    }
    assert_eq!((go_bool("T"), go_bool("0")), (Ok(true), Ok(false)));
    assert!(go_bool("yes").is_err());
    let out = normalise_args(["r", "--a=", "--b", "", "--c_d=1", "-v=", "--e", "x", "--", "--f="]);
    assert_eq!(out, ["r", "--c-d=1", "--e", "x", "--", "--f="]);
}

#[test]
fn a_cluster_is_joined_with_a_kubeconfig_or_in_a_pod() {
    let pem = crate::tls::CertificatePem::self_signed().unwrap();
    let nowhere = |_: &str| None;
    let in_pod = |name: &str| match name {
        "KUBERNETES_SERVICE_HOST" => Some("10.0.0.1".to_string()),
        "POD_NAMESPACE" => Some("reports".to_string()),
        "POD_NAME" => Some("reports-server-0".to_string()),
        _ => None,
    };
    let plain = Args::try_from_args(["r"]).unwrap();
    assert!(plain.cluster_config(nowhere, &pem).is_none(), "standalone outside a pod");
    assert!(plain.cluster_config(in_pod, &pem).is_some(), "a pod's service account");
    let opted_out = Args::try_from_args(["r", "--dangerously-serve-without-authentication"]).unwrap();
    assert!(opted_out.cluster_config(in_pod, &pem).is_none());
    let given = Args::try_from_args(["r", "--authorization-kubeconfig=/k", "--authentication-kubeconfig=/a"])
        .unwrap();
    let config = given.cluster_config(nowhere, &pem).unwrap();
    assert_eq!(config.kubeconfig, Some(std::path::PathBuf::from("/a")));
    assert!(config.apiservices.is_none(), "no --servicename: nothing registered");

    let upstream = Args::try_from_args(
        std::iter::once("reports-server")
            .chain(super::UPSTREAM_CHART_ARGS)
            .chain(["--storeephemeralreports=false"]),
    )
    .unwrap();
    let registration = upstream.cluster_config(in_pod, &pem).unwrap().apiservices.unwrap();
    assert_eq!(
        (registration.service_name.as_str(), registration.service_namespace.as_str()),
        ("reports-server", "reports-server")
    );
    assert_eq!(
        registration.group_versions,
        vec![
            ("wgpolicyk8s.io".to_string(), "v1alpha2".to_string()),
            ("openreports.io".into(), "v1alpha1".into()),
            ("query.reports-server.io".into(), "v1alpha1".into())
        ]
    );
    assert_eq!(registration.identity, "reports-server-0");
    assert_eq!(
        registration.ca_bundle.as_deref(),
        Some(pem.cert_pem.as_str()),
        "a self-signed certificate is its own CA"
    );
    assert!(upstream.unimplemented_flags(false)[0].contains("--clusterrolename"));
    assert!(!upstream.unimplemented_flags(false)[0].contains("--storeephemeralreports"));
}

#[test]
fn the_ca_next_to_the_serving_certificate_is_the_apiservices_ca_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    std::fs::write(dir.path().join("ca.crt"), ca).unwrap();
    let cert = dir.path().join("tls.crt").display().to_string();
    let key = dir.path().join("tls.key").display().to_string();
    let args = Args::try_from_args([
        "r",
        "--tls-cert-file",
        &cert,
        "--tls-private-key-file",
        &key,
        "--servicename=s",
        "--kubeconfig=/k",
    ])
    .unwrap();
    let pem = crate::tls::CertificatePem::self_signed().unwrap();
    let registration = args.cluster_config(|_| None, &pem).unwrap().apiservices.unwrap();
    assert_eq!(registration.ca_bundle.as_deref(), Some(ca));
}

#[test]
fn custom_result_metrics_labels_are_a_comma_separated_list_checked_with_the_mode() {
    use crate::result_metrics::{Mode, SettingsError};
    let parse = |line: &[&str]| {
        Args::try_from_args(std::iter::once("reports-server").chain(line.iter().copied())).unwrap()
    };
    let args = parse(&[
        "--result-metrics",
        "custom",
        "--result-metrics-labels",
        "namespace,policy,label:app.kubernetes.io/name",
        "--result-metrics-labels=property:score",
    ]);
    let settings = args.result_metrics_settings().unwrap();
    assert_eq!(settings.mode, Mode::Custom);
    assert_eq!(settings.labels, ["namespace", "policy", "label:app.kubernetes.io/name", "property:score"]);
    // An empty value means unset, as for every flag: custom then has no labels.
    let args = parse(&["--result-metrics=custom", "--result-metrics-labels="]);
    assert_eq!(args.result_metrics_settings(), Err(SettingsError::CustomWithoutLabels));
    let args = parse(&["--result-metrics-labels", "policy"]);
    assert_eq!(args.result_metrics_settings(), Err(SettingsError::LabelsWithoutCustom(Mode::Detailed)));
    assert_eq!(parse(&[]).result_metrics_settings().unwrap(), Default::default());
}

/// The SQLite WAL's limit reaches the store's settings; a limit under a MiB is refused by name.
#[test]
fn sqlite_wal_bytes_sets_the_wal_limit_and_refuses_tiny_ones() {
    let args = Args::try_from_args(["r", "--sqlite-wal-bytes=268435456"]).unwrap();
    assert_eq!(args.sqlite_limits().wal_bytes, 256 << 20);
    let default = Args::try_from_args(["r"]).unwrap().sqlite_limits();
    assert_eq!(default.wal_bytes, reports_store::sqlite::SqliteLimits::default().wal_bytes);
    let error = Args::try_from_args(["r", "--sqlite-wal-bytes=4096"]).expect_err("refused").to_string();
    assert!(error.contains("--sqlite-wal-bytes"), "{error}");
}
