//! `creditwatch demo`: every provider's simulator answers and the numbers move.

use crate::support::value;

fn used(state: &creditwatch::state::State, account: &str, pool: &str) -> Option<f64> {
    let a = state.account(account)?;
    let snap = a.snapshot?;
    snap.pools
        .iter()
        .find(|p| p.reading.pool == pool && p.reading.key.is_empty())
        .and_then(|p| p.reading.used)
}

#[tokio::test]
async fn the_demo_shows_every_provider_with_moving_numbers() {
    let demo = creditwatch::demo::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let state = demo.running.state.clone();
    demo.running.wait_ready().await;
    let url = format!("http://{}/metrics", demo.running.addr);
    let m = reqwest::get(&url).await.unwrap().text().await.unwrap();
    for (provider, account) in [
        ("fluximage", "images-agency"),
        ("imagerouter", "images-router"),
        ("floow", "design-floow"),
        ("http_json", "llm-openrouter"),
    ] {
        let labels = [
            format!("provider=\"{provider}\""),
            format!("account=\"{account}\""),
        ];
        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
        assert_eq!(value(&m, "creditwatch_up", &l), Some(1.0), "{account}\n{m}");
    }
    // Per-key pools, the temp_jwt key, endpoint series, and Floow's burn from its history.
    assert!(m.contains("key=\"Production Key (d9eb93dc)\""), "{m}");
    assert!(m.contains("creditwatch_key_active{provider=\"imagerouter\",account=\"images-router\",key=\"Temporary web token (imagerouter.io)\"} 0"));
    assert!(m.contains("creditwatch_endpoint_credits{provider=\"floow\",account=\"design-floow\",endpoint=\"image_to_html\""));
    assert!(
        value(
            &m,
            "creditwatch_burn_rate_credits_per_second",
            &["account=\"design-floow\"", "window=\"7d\""]
        )
        .is_some_and(|b| b > 0.0),
        "{m}"
    );
    // The balance and the OpenRouter-style key keep burning between polls.
    let balance = used(&state, "images-router", "balance").unwrap();
    let key = used(&state, "llm-openrouter", "key").unwrap();
    state
        .wait_until(|s| {
            used(s, "images-router", "balance").is_some_and(|u| u > balance)
                && used(s, "llm-openrouter", "key").is_some_and(|u| u > key)
        })
        .await;
    demo.running.shutdown().await;
}
