//! Bearer tokens, reviewed by kube-apiserver (TokenReview) and cached briefly.
//!
//! Tokens are cached under their SHA-256, never in clear, for a short time whether they were
//! accepted or refused (k8s.io/apiserver's delegated authentication caches both for 10 s), so a
//! client sending the same token on every request costs one review per TTL. A review that
//! *failed* (kube-apiserver unreachable) is not cached: the next request asks again.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

use crate::{cache::TtlCache, AuthError, UserInfo};

/// Asks the cluster who a token belongs to.
#[async_trait::async_trait]
pub trait TokenReviewer: Send + Sync {
    /// The token's user, or None when the cluster says the token is not valid.
    async fn review_token(&self, token: &str) -> Result<Option<UserInfo>, AuthError>;
}

/// How long answers are kept, and how many.
#[derive(Debug, Clone, Copy)]
pub struct TokenCacheSettings {
    /// TTL of an accepted token.
    pub success_ttl: Duration,
    /// TTL of a refused token.
    pub failure_ttl: Duration,
    /// Most tokens remembered.
    pub capacity: usize,
}

impl Default for TokenCacheSettings {
    fn default() -> Self {
        Self { success_ttl: Duration::from_secs(10), failure_ttl: Duration::from_secs(10), capacity: 4096 }
    }
}

/// Token authentication with a cache in front of the reviewer.
pub struct TokenAuthenticator {
    /// The cluster's TokenReview endpoint.
    reviewer: Arc<dyn TokenReviewer>,
    /// Answers by token hash.
    cache: TtlCache<[u8; 32], Option<UserInfo>>,
    /// TTLs and bound.
    settings: TokenCacheSettings,
}

impl TokenAuthenticator {
    /// An authenticator asking `reviewer`.
    pub fn new(reviewer: Arc<dyn TokenReviewer>, settings: TokenCacheSettings) -> Self {
        Self { reviewer, cache: TtlCache::new(settings.capacity), settings }
    }

    /// The token's user, or None for a token the cluster refuses.
    pub async fn authenticate(&self, token: &str) -> Result<Option<UserInfo>, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(answer) = self.cache.get(&key, Instant::now()) {
            return Ok(answer);
        }
        let answer = self.reviewer.review_token(token).await?;
        let ttl = if answer.is_some() { self.settings.success_ttl } else { self.settings.failure_ttl };
        self.cache.insert(key, answer.clone(), ttl, Instant::now());
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Accepts the token "good" as alice, refuses anything else, fails on "down"; counts calls.
    struct Counting(AtomicUsize);

    #[async_trait::async_trait]
    impl TokenReviewer for Counting {
        async fn review_token(&self, token: &str) -> Result<Option<UserInfo>, AuthError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            match token {
                "good" => Ok(Some(UserInfo { name: "alice".into(), ..Default::default() })),
                "down" => Err(AuthError::NoStatus { what: "TokenReview" }),
                _ => Ok(None),
            }
        }
    }

    #[tokio::test]
    async fn answers_are_cached_both_ways_but_failures_are_not() {
        let reviewer = Arc::new(Counting(AtomicUsize::new(0)));
        let tokens = TokenAuthenticator::new(reviewer.clone(), TokenCacheSettings::default());
        for _ in 0..3 {
            assert_eq!(tokens.authenticate("good").await.expect("review").expect("user").name, "alice");
            assert_eq!(tokens.authenticate("bad").await.expect("review"), None);
        }
        assert_eq!(reviewer.0.load(Ordering::SeqCst), 2);
        assert!(tokens.authenticate("down").await.is_err());
        assert!(tokens.authenticate("down").await.is_err());
        assert_eq!(reviewer.0.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_zero_ttl_asks_every_time() {
        let reviewer = Arc::new(Counting(AtomicUsize::new(0)));
        let settings = TokenCacheSettings { success_ttl: Duration::ZERO, ..Default::default() };
        let tokens = TokenAuthenticator::new(reviewer.clone(), settings);
        tokens.authenticate("good").await.expect("review");
        tokens.authenticate("good").await.expect("review");
        assert_eq!(reviewer.0.load(Ordering::SeqCst), 2);
    }
}
