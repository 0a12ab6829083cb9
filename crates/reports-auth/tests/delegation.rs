//! Delegated authentication and authorization against a scripted kube-apiserver over real TLS,
//! through the real kube-rs client.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderValue};
use reports_auth::{
    authenticate::{Authenticator, PeerCertificates},
    authorize::{Authorizer, AuthorizerSettings},
    cluster::{self, ClusterReviews},
    config::{ClientAuthConfig, ClientAuthFlags},
    token::{TokenAuthenticator, TokenCacheSettings},
    UserInfo,
};
use reports_core::request_info::RequestInfo;
use reports_test_support::{
    fake_kube::FakeKube,
    pki::{CertAndKey, TestCa, Usage},
};
use rustls::pki_types::{pem::PemObject, CertificateDer};

/// Fails the test instead of hanging when an expected change never comes.
const DEADLINE: Duration = Duration::from_secs(20);

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

struct Cluster {
    fake: FakeKube,
    client_ca: TestCa,
    proxy_ca: TestCa,
    _dir: tempfile::TempDir,
    client: kube::Client,
}

fn auth_configmap(client_ca: &TestCa, proxy_ca: &TestCa, allowed: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("client-ca-file".to_string(), client_ca.pem()),
        ("requestheader-client-ca-file".to_string(), proxy_ca.pem()),
        ("requestheader-allowed-names".to_string(), allowed.to_string()),
        ("requestheader-username-headers".to_string(), r#"["X-Remote-User"]"#.to_string()),
        ("requestheader-group-headers".to_string(), r#"["X-Remote-Group"]"#.to_string()),
        ("requestheader-extra-headers-prefix".to_string(), r#"["X-Remote-Extra-"]"#.to_string()),
        ("requestheader-uid-headers".to_string(), r#"["X-Remote-Uid"]"#.to_string()),
    ])
}

async fn cluster() -> Cluster {
    install_crypto();
    let fake = FakeKube::start().await;
    let client_ca = TestCa::new("cluster client CA");
    let proxy_ca = TestCa::new("front-proxy CA");
    fake.set_auth_configmap(auth_configmap(&client_ca, &proxy_ca, r#"["front-proxy-client"]"#));
    let dir = tempfile::tempdir().expect("temporary directory");
    let kubeconfig = fake.write_kubeconfig(dir.path());
    let client = cluster::client(Some(&kubeconfig)).await.expect("client").expect("a cluster");
    Cluster { fake, client_ca, proxy_ca, _dir: dir, client }
}

fn peer(cert: &CertAndKey) -> PeerCertificates {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes()).collect::<Result<_, _>>().expect("PEM");
    PeerCertificates::new(chain)
}

fn proxy_headers(user: &str, groups: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("x-remote-user", HeaderValue::from_str(user).expect("header"));
    for group in groups {
        headers.append("x-remote-group", HeaderValue::from_str(group).expect("header"));
    }
    headers.insert("x-remote-uid", HeaderValue::from_static("uid-7"));
    headers.insert("x-remote-extra-reason", HeaderValue::from_static("audit"));
    headers
}

async fn authenticator(cluster: &Cluster) -> Authenticator {
    let config = cluster::watch_client_auth(cluster.client.clone(), ClientAuthFlags::default(), false)
        .await
        .expect("authentication settings");
    let tokens = TokenAuthenticator::new(
        Arc::new(ClusterReviews::new(cluster.client.clone())),
        TokenCacheSettings::default(),
    );
    Authenticator::new(config, Some(tokens))
}

#[tokio::test]
async fn the_front_proxy_is_believed_only_with_its_certificate_and_an_allowed_name() {
    let cluster = cluster().await;
    let authn = authenticator(&cluster).await;
    let headers = proxy_headers("alice", &["devs"]);

    let proxy = cluster.proxy_ca.client("front-proxy-client", &[]);
    let user = authn.authenticate(&peer(&proxy), &headers).await.expect("the proxy's user");
    assert_eq!(user.name, "alice");
    assert_eq!(user.uid, "uid-7");
    assert_eq!(user.groups, vec!["devs", "system:authenticated"]);
    assert_eq!(user.extra["reason"], vec!["audit"]);

    // The same headers with no certificate, or from impostors, are never believed.
    let spoofed = authn.authenticate(&PeerCertificates::default(), &headers).await.expect("anonymous");
    assert_eq!(spoofed, UserInfo::anonymous());
    let impostor = TestCa::new("front-proxy CA").client("front-proxy-client", &[]);
    assert!(authn.authenticate(&peer(&impostor), &headers).await.is_err(), "right name, wrong CA");
    let wrong_name = cluster.proxy_ca.client("someone-else", &[]);
    assert!(authn.authenticate(&peer(&wrong_name), &headers).await.is_err(), "right CA, name not allowed");
    let expired = cluster.proxy_ca.expired_client("front-proxy-client");
    assert!(authn.authenticate(&peer(&expired), &headers).await.is_err(), "expired proxy certificate");
}

#[tokio::test]
async fn client_certificates_name_user_and_groups_and_bad_ones_are_refused() {
    let cluster = cluster().await;
    let authn = authenticator(&cluster).await;
    let none = HeaderMap::new();
    let cert = cluster.client_ca.client("bob", &["system:masters"]);
    let user = authn.authenticate(&peer(&cert), &none).await.expect("bob");
    assert_eq!(
        (user.name.as_str(), user.groups.clone()),
        ("bob", vec!["system:masters".to_string(), "system:authenticated".into()])
    );
    // Front-proxy headers on an ordinary client certificate do not change who it is.
    let user = authn.authenticate(&peer(&cert), &proxy_headers("alice", &[])).await.expect("bob");
    assert_eq!(user.name, "bob");

    let stranger = TestCa::new("another CA").client("bob", &[]);
    assert!(authn.authenticate(&peer(&stranger), &none).await.is_err());
    assert!(authn.authenticate(&peer(&cluster.client_ca.expired_client("bob")), &none).await.is_err());
    let server_only = cluster.client_ca.leaf(vec![], "bob", &[], Usage::ServerOnly, false);
    assert!(authn.authenticate(&peer(&server_only), &none).await.is_err(), "no client-auth usage");
}

#[tokio::test]
async fn tokens_are_reviewed_once_per_ttl_and_bad_tokens_are_refused() {
    let cluster = cluster().await;
    cluster.fake.add_token("token-carol", "carol", &["readers"]);
    let authn = authenticator(&cluster).await;
    let bearer = |token: &str| {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).expect("header"));
        headers
    };
    for _ in 0..3 {
        let carol =
            authn.authenticate(&PeerCertificates::default(), &bearer("token-carol")).await.expect("carol");
        assert_eq!((carol.name.as_str(), carol.uid.as_str()), ("carol", "uid-carol"));
        assert_eq!(carol.groups, vec!["readers", "system:authenticated"]);
        assert!(authn.authenticate(&PeerCertificates::default(), &bearer("forged")).await.is_err());
    }
    assert_eq!(cluster.fake.token_reviews(), 2, "one review per token within the TTL");
    // A bad certificate does not hide a good token, as in kube.
    let stranger = TestCa::new("another CA").client("mallory", &[]);
    let carol = authn.authenticate(&peer(&stranger), &bearer("token-carol")).await.expect("carol");
    assert_eq!(carol.name, "carol");
}

#[tokio::test]
async fn access_reviews_carry_kubes_attributes_and_answers_are_cached() {
    let cluster = cluster().await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    cluster.fake.set_access_policy(move |spec| {
        record.lock().expect("lock").push(spec.clone());
        let verb = spec.pointer("/resourceAttributes/verb").and_then(|v| v.as_str()).unwrap_or_default();
        (verb == "list", if verb == "list" { String::new() } else { "RBAC: no rule allows it".into() })
    });
    let authz =
        Authorizer::new(Arc::new(ClusterReviews::new(cluster.client.clone())), AuthorizerSettings::default());
    let alice = UserInfo {
        name: "alice".into(),
        groups: vec!["devs".into(), "system:authenticated".into()],
        ..Default::default()
    };
    let ns = "/apis/wgpolicyk8s.io/v1alpha2/namespaces/team-a/policyreports";
    for _ in 0..2 {
        authz.authorize(&alice, &RequestInfo::resolve("GET", ns, None)).await.expect("list allowed");
        let denied = authz
            .authorize(
                &alice,
                &RequestInfo::resolve("GET", ns, Some("watch=true&fieldSelector=metadata.name%3Dr1")),
            )
            .await
            .expect_err("watch denied");
        assert_eq!(denied.code, 403);
        assert_eq!(
            denied.message,
            "policyreports.wgpolicyk8s.io \"r1\" is forbidden: User \"alice\" cannot watch resource \"policyreports\" in API group \"wgpolicyk8s.io\" in the namespace \"team-a\": RBAC: no rule allows it"
        );
    }
    assert_eq!(cluster.fake.access_reviews(), 2, "cached for the second round");
    let specs = seen.lock().expect("lock").clone();
    assert_eq!(specs[0]["user"], "alice");
    assert_eq!(specs[0]["groups"], serde_json::json!(["devs", "system:authenticated"]));
    assert_eq!(
        specs[0]["resourceAttributes"],
        serde_json::json!({"namespace": "team-a", "verb": "list", "group": "wgpolicyk8s.io", "version": "v1alpha2", "resource": "policyreports", "subresource": "", "name": ""})
    );
    assert_eq!(specs[1]["resourceAttributes"]["verb"], "watch");
    assert_eq!(specs[1]["resourceAttributes"]["name"], "r1");
}

#[tokio::test]
async fn a_rotated_ca_applies_without_restart() {
    let cluster = cluster().await;
    let mut settings = cluster::watch_client_auth(cluster.client.clone(), ClientAuthFlags::default(), false)
        .await
        .expect("settings");
    let authn = Authenticator::new(settings.clone(), None);
    let old_cert = cluster.client_ca.client("dave", &[]);
    // One connection, kept open across the rotation: its checks are reused until the settings change.
    let connection = peer(&old_cert);
    assert_eq!(authn.authenticate(&connection, &HeaderMap::new()).await.expect("dave").name, "dave");
    assert_eq!(authn.authenticate(&connection, &HeaderMap::new()).await.expect("dave").name, "dave");

    let rotated = TestCa::new("rotated client CA");
    settings.borrow_and_update();
    cluster.fake.set_auth_configmap(auth_configmap(&rotated, &cluster.proxy_ca, "[]"));
    tokio::time::timeout(DEADLINE, settings.changed())
        .await
        .expect("the rotation arrives")
        .expect("watch open");
    let expected =
        ClientAuthConfig::from_configmap(&auth_configmap(&rotated, &cluster.proxy_ca, "[]")).expect("parses");
    assert_eq!(**settings.borrow(), expected);
    assert!(
        authn.authenticate(&peer(&old_cert), &HeaderMap::new()).await.is_err(),
        "the old CA no longer counts"
    );
    let new_cert = rotated.client("dave", &[]);
    assert_eq!(authn.authenticate(&peer(&new_cert), &HeaderMap::new()).await.expect("dave").name, "dave");
    // With no allowed names, any certificate of the proxy CA may proxy.
    let any_proxy = cluster.proxy_ca.client("any-name", &[]);
    assert_eq!(
        authn.authenticate(&peer(&any_proxy), &proxy_headers("erin", &[])).await.expect("erin").name,
        "erin"
    );
}

#[tokio::test]
async fn the_cluster_refuses_a_server_without_its_credential() {
    install_crypto();
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let path = fake.write_kubeconfig(dir.path());
    let text = std::fs::read_to_string(&path)
        .expect("kubeconfig")
        .replace(reports_test_support::fake_kube::SERVER_TOKEN, "wrong");
    std::fs::write(&path, text).expect("rewrite");
    let client = cluster::client(Some(&path)).await.expect("client").expect("cluster");
    let reviews = ClusterReviews::new(client);
    let error = reports_auth::token::TokenReviewer::review_token(&reviews, "x")
        .await
        .expect_err("401 from the cluster");
    assert!(error.to_string().contains("TokenReview failed"), "{error}");
}
