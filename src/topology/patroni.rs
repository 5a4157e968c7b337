//! Patroni as a topology source (`[topology] source = "patroni"`): polls `GET /cluster` on
//! every Patroni REST URL and takes the freshest answer ([`freshest`]); the watcher's
//! aggregator follows its member list
//! (members that are no node yet become nodes, nodes Patroni brought in leave with their
//! member) and applies its [`DcsVerdict`] on top of its own probes.
//!
//! Patroni's leader key in its DCS is the cluster's one truth about who may write: every
//! causeway instance that follows it agrees with the others and with Patroni, without any
//! coordination of its own. Replay positions still come from probing each node directly,
//! because read-your-writes needs positions fresher than Patroni's lag figure. The HTTP client
//! is a plain HTTP/1.1 GET over a tokio `TcpStream` (Patroni's API is small JSON on a trusted
//! network; no TLS here yet).

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::NodeId;

/// The most a `/cluster` answer may hold: a member list, never megabytes.
const MAX_RESPONSE: usize = 1 << 20;

/// Member states in which a replica serves reads (Patroni 3.x says `running` or `streaming`
/// for a replica that replays; `in archive recovery` replays from the archive).
const READABLE_STATES: &[&str] = &["running", "streaming", "in archive recovery"];

/// Why `/cluster` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PatroniError {
    /// The URL is not `http://host:port[/...]`.
    #[error("not an http://host:port URL: {0}")]
    BadUrl(String),
    /// Connecting, sending or receiving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// No complete answer within the time allowed.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Not an HTTP 200 with a body.
    #[error("bad HTTP answer: {0}")]
    Http(String),
    /// The body is not the JSON `/cluster` returns.
    #[error("bad /cluster JSON: {0}")]
    Json(String),
}

/// What Patroni calls a member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberRole {
    /// Holds the leader key: the one node that may take writes.
    Leader,
    /// Leader of a standby cluster: holds the key, but is in recovery.
    StandbyLeader,
    /// Any replica (`replica`, `sync_standby`, `quorum_standby`).
    Replica,
    /// A role this version does not know.
    Other,
}

/// One entry of `/cluster`'s `members`.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Patroni's member name.
    pub name: String,
    /// Its role.
    pub role: MemberRole,
    /// `running`, `streaming`, `stopped`, `starting`, ...
    pub state: String,
    /// PostgreSQL host as Patroni advertises it.
    pub host: String,
    /// PostgreSQL port.
    pub port: u16,
    /// Timeline, when Patroni reports one.
    pub timeline: Option<u32>,
    /// Replication lag in bytes as Patroni computes it (`None` when `"unknown"` or absent);
    /// informational only: routing uses causeway's own probes.
    pub lag: Option<u64>,
    /// Tag `nofailover`: Patroni never promotes it (nothing changes for routing).
    pub nofailover: bool,
    /// Tag `noloadbalance`: it gets no reads.
    pub noloadbalance: bool,
}

/// Parses a `/cluster` body.
pub fn parse_cluster(body: &str) -> Result<Vec<Member>, PatroniError> {
    let doc: Value = serde_json::from_str(body).map_err(|e| PatroniError::Json(e.to_string()))?;
    let members = doc
        .get("members")
        .and_then(Value::as_array)
        .ok_or_else(|| PatroniError::Json("no members array".into()))?;
    members.iter().map(member).collect()
}

fn member(m: &Value) -> Result<Member, PatroniError> {
    let text = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let tag = |k: &str| {
        m.get("tags")
            .and_then(|t| t.get(k))
            .is_some_and(|v| v.as_bool() == Some(true) || v.as_str() == Some("true"))
    };
    let port = m
        .get("port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| PatroniError::Json(format!("member {} has no port", text("name"))))?;
    let role = match text("role").as_str() {
        "leader" | "master" | "primary" => MemberRole::Leader,
        "standby_leader" => MemberRole::StandbyLeader,
        "replica" | "sync_standby" | "quorum_standby" => MemberRole::Replica,
        _ => MemberRole::Other,
    };
    Ok(Member {
        name: text("name"),
        role,
        state: text("state"),
        host: text("host"),
        port,
        timeline: m
            .get("timeline")
            .and_then(Value::as_u64)
            .and_then(|t| u32::try_from(t).ok()),
        lag: m.get("lag").and_then(Value::as_u64),
        nofailover: tag("nofailover"),
        noloadbalance: tag("noloadbalance"),
    })
}

/// What Patroni's view means for the node slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcsVerdict {
    /// The node holding Patroni's leader key (role `leader`), if any: the only node that may
    /// take writes.
    pub leader: Option<NodeId>,
    /// Per node slot: Patroni forbids reads there (not a member, `noloadbalance`, or not in a
    /// replaying state).
    pub no_reads: Vec<bool>,
    /// Members that match no node (`host:port`): only those left without a slot.
    pub unknown: Vec<String>,
}

/// Maps `members` onto the `(host, port)` of each node slot (an exact host and port match).
pub fn verdict(members: &[Member], nodes: &[(String, u16)]) -> DcsVerdict {
    let find =
        |(host, port): &(String, u16)| members.iter().find(|m| m.port == *port && m.host == *host);
    let leader = nodes
        .iter()
        .position(|n| find(n).is_some_and(|m| m.role == MemberRole::Leader));
    let no_reads = nodes
        .iter()
        .map(|n| {
            find(n).is_none_or(|m| m.noloadbalance || !READABLE_STATES.contains(&m.state.as_str()))
        })
        .collect();
    let unknown = members
        .iter()
        .filter(|m| !nodes.iter().any(|(h, p)| *h == m.host && *p == m.port))
        .map(|m| format!("{} ({}:{})", m.name, m.host, m.port))
        .collect();
    DcsVerdict {
        leader,
        no_reads,
        unknown,
    }
}

/// Of several `/cluster` answers (in the configured order of their URLs), the one to follow.
/// Each Patroni member answers from its own copy of the DCS, and a member busy demoting
/// itself, or cut off from the others, may answer with an old one that still names it leader.
/// A leader only ever moves to a higher timeline, so the answer whose leader reports the
/// highest timeline is the newest; on a tie (or no timeline anywhere), the first URL's.
pub fn freshest(answers: Vec<Vec<Member>>) -> Option<Vec<Member>> {
    let leader_timeline = |members: &[Member]| {
        members
            .iter()
            .find(|m| m.role == MemberRole::Leader)
            .and_then(|m| m.timeline)
    };
    let mut best: Option<(Option<u32>, Vec<Member>)> = None;
    for members in answers {
        let t = leader_timeline(&members);
        if best.as_ref().is_none_or(|(b, _)| t > *b) {
            best = Some((t, members));
        }
    }
    best.map(|(_, m)| m)
}

/// `GET /cluster` on `url`, within `limit`.
pub async fn fetch_cluster(url: &str, limit: Duration) -> Result<Vec<Member>, PatroniError> {
    let authority = url
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .filter(|a| a.contains(':'))
        .ok_or_else(|| PatroniError::BadUrl(url.to_owned()))?;
    let body = tokio::time::timeout(limit, get(authority, "/cluster"))
        .await
        .map_err(|_| PatroniError::Timeout(limit))??;
    parse_cluster(&body)
}

/// One HTTP/1.1 GET with `Connection: close`; returns the body of a 200 answer.
async fn get(authority: &str, path: &str) -> Result<String, PatroniError> {
    let mut stream = TcpStream::connect(authority).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\n\
         User-Agent: causeway\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut raw)
        .await?;
    if raw.len() > MAX_RESPONSE {
        return Err(PatroniError::Http("answer larger than 1 MiB".into()));
    }
    let text = String::from_utf8(raw).map_err(|_| PatroniError::Http("not UTF-8".into()))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| PatroniError::Http("no end of headers".into()))?;
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(PatroniError::Http(status.to_owned()));
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        dechunk(body)
    } else {
        Ok(body.to_owned())
    }
}

/// Decodes a chunked body.
fn dechunk(mut rest: &str) -> Result<String, PatroniError> {
    let mut out = String::new();
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .ok_or_else(|| PatroniError::Http("truncated chunk".into()))?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| PatroniError::Http("bad chunk size".into()))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = after
            .get(..size)
            .ok_or_else(|| PatroniError::Http("truncated chunk".into()))?;
        out.push_str(chunk);
        rest = after.get(size + 2..).unwrap_or("");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `/cluster` answer as Patroni 3.0 gives it (shape from Patroni's REST API
    /// documentation): a leader, a streaming replica with tags, a stopped replica with unknown
    /// lag, and a member causeway was not told about.
    const CLUSTER: &str = r#"{
      "members": [
        {"name": "pg1", "role": "leader", "state": "running",
         "api_url": "http://127.0.0.1:8008/patroni", "host": "127.0.0.1", "port": 5432,
         "timeline": 5, "tags": {"clonefrom": true}},
        {"name": "pg2", "role": "replica", "state": "streaming",
         "api_url": "http://127.0.0.1:8009/patroni", "host": "127.0.0.1", "port": 5433,
         "timeline": 5, "tags": {"noloadbalance": true, "nofailover": true}, "lag": 0,
         "receive_lag": 0, "replay_lag": 0},
        {"name": "pg3", "role": "sync_standby", "state": "running",
         "api_url": "http://127.0.0.1:8010/patroni", "host": "127.0.0.1", "port": 5434,
         "timeline": 5, "lag": 1024},
        {"name": "pg4", "role": "replica", "state": "stopped",
         "api_url": "http://10.0.0.9:8008/patroni", "host": "10.0.0.9", "port": 5432,
         "lag": "unknown"}
      ],
      "scope": "demo"
    }"#;

    fn nodes() -> Vec<(String, u16)> {
        [5432, 5433, 5434, 5435]
            .iter()
            .map(|p| ("127.0.0.1".to_owned(), *p))
            .collect()
    }

    /// The same cluster with its leader moved: `pg2` promoted on timeline 6.
    fn switched_over() -> Vec<Member> {
        let mut m = parse_cluster(CLUSTER).unwrap();
        m[0].role = MemberRole::Replica;
        m[1].role = MemberRole::Leader;
        m[1].timeline = Some(6);
        m
    }

    #[test]
    fn the_answer_whose_leader_has_the_newest_timeline_wins() {
        let old = parse_cluster(CLUSTER).unwrap();
        let new = switched_over();
        // A stale copy of the DCS (the demoted member's own) first in URL order loses.
        assert_eq!(freshest(vec![old.clone(), new.clone()]), Some(new.clone()));
        assert_eq!(freshest(vec![new.clone(), old.clone()]), Some(new.clone()));
        // No leader (the key released mid-switchover) is older than any leader's timeline.
        let mut leaderless = old.clone();
        leaderless[0].role = MemberRole::Replica;
        assert_eq!(
            freshest(vec![leaderless.clone(), old.clone()]),
            Some(old.clone())
        );
        // A tie keeps the first URL's answer.
        assert_eq!(freshest(vec![leaderless.clone()]), Some(leaderless));
        let mut same = old.clone();
        same[2].state = "stopped".into();
        assert_eq!(freshest(vec![same.clone(), old.clone()]), Some(same));
        assert_eq!(freshest(Vec::new()), None);
    }

    #[test]
    fn parses_members_roles_and_tags() {
        let m = parse_cluster(CLUSTER).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].role, MemberRole::Leader);
        assert_eq!(m[0].timeline, Some(5));
        assert!(!m[0].noloadbalance);
        assert!(m[1].noloadbalance && m[1].nofailover);
        assert_eq!(m[1].state, "streaming");
        assert_eq!(m[2].role, MemberRole::Replica);
        assert_eq!(m[2].lag, Some(1024));
        assert_eq!(m[3].lag, None, "\"unknown\" lag");
        assert_eq!(m[3].timeline, None);
        assert!(parse_cluster("{}").is_err());
        assert!(parse_cluster("not json").is_err());
    }

    #[test]
    fn maps_the_leader_reads_and_unknown_members() {
        let v = verdict(&parse_cluster(CLUSTER).unwrap(), &nodes());
        assert_eq!(v.leader, Some(0));
        // pg2 is noloadbalance; pg3 reads; 5435 is not a member (removed: drains).
        assert_eq!(v.no_reads, vec![false, true, false, true]);
        assert_eq!(v.unknown, vec!["pg4 (10.0.0.9:5432)".to_owned()]);
    }

    #[test]
    fn no_leader_during_an_election_and_standby_leader_is_not_a_writer() {
        let body = CLUSTER.replace("\"leader\"", "\"replica\"");
        assert_eq!(
            verdict(&parse_cluster(&body).unwrap(), &nodes()).leader,
            None
        );
        let body = CLUSTER.replace("\"leader\"", "\"standby_leader\"");
        let v = verdict(&parse_cluster(&body).unwrap(), &nodes());
        assert_eq!(v.leader, None);
        assert!(
            !v.no_reads[0],
            "a standby leader replays: it may serve reads"
        );
    }

    #[test]
    fn chunked_bodies_decode() {
        assert_eq!(
            dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            "abcde"
        );
        assert!(dechunk("5\r\nab").is_err());
    }

    #[tokio::test]
    async fn fetches_over_http() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"GET /cluster HTTP/1.1\r\n"));
            let answer = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{CLUSTER}",
                CLUSTER.len()
            );
            s.write_all(answer.as_bytes()).await.unwrap();
        });
        let m = fetch_cluster(&format!("http://{addr}"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(m.len(), 4);
        let e = fetch_cluster("http://127.0.0.1:1", Duration::from_secs(5)).await;
        assert!(e.is_err());
        assert!(matches!(
            fetch_cluster("https://x:1", Duration::from_secs(1)).await,
            Err(PatroniError::BadUrl(_))
        ));
    }
}
