//! Which web pages may open the signaling socket. A browser names the page that opens a
//! WebSocket in its `Origin` header; without a check, any site a user visits could join rooms
//! in their name. Allowed: the page's own origin (the server's own `Host`), origins listed with
//! `--allowed-origin`, and any loopback origin when the server is itself reached on loopback (a
//! developer's `trunk serve`). Clients that are not browsers send no `Origin` and pass: the
//! check protects browser users, and such a client could claim any origin anyway.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum OriginRefused {
    #[error("pages from origin `null` (a sandboxed or file page) may not open the socket")]
    Null,
    #[error("pages from {0} may not open the socket: serve the page from this server, or allow its origin with --allowed-origin")]
    Foreign(String),
}

/// Whether a socket opened by a page of `origin` (the request's `Origin` header) on a server
/// reached as `host` (its `Host` header) is allowed, given the `allowed` origins.
pub fn check(
    origin: Option<&str>,
    host: Option<&str>,
    allowed: &[String],
) -> Result<(), OriginRefused> {
    let Some(origin) = origin.map(str::trim) else {
        return Ok(());
    };
    if origin.eq_ignore_ascii_case("null") {
        return Err(OriginRefused::Null);
    }
    let origin = origin.trim_end_matches('/');
    if allowed
        .iter()
        .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return Ok(());
    }
    let authority = origin
        .split_once("://")
        .map_or(origin, |(_, authority)| authority);
    if let Some(host) = host {
        if authority.eq_ignore_ascii_case(host) {
            return Ok(());
        }
        if is_loopback(authority) && is_loopback(host) {
            return Ok(());
        }
    }
    Err(OriginRefused::Foreign(origin.to_owned()))
}

/// Whether an authority (`host[:port]`) names this machine's loopback interface.
fn is_loopback(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        // `[::1]:8080`
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(list: &[&str]) -> Vec<String> {
        list.iter().map(|origin| (*origin).to_owned()).collect()
    }

    #[test]
    fn the_pages_own_origin_passes_and_others_do_not() {
        let none = allowed(&[]);
        assert_eq!(
            check(
                Some("https://meet.example.org"),
                Some("meet.example.org"),
                &none
            ),
            Ok(())
        );
        assert_eq!(
            check(Some("http://10.0.0.5:4000"), Some("10.0.0.5:4000"), &none),
            Ok(())
        );
        assert_eq!(
            check(
                Some("https://evil.example"),
                Some("meet.example.org"),
                &none
            ),
            Err(OriginRefused::Foreign("https://evil.example".to_owned()))
        );
        // The same host on another port is another origin.
        assert!(check(Some("http://10.0.0.5:8080"), Some("10.0.0.5:4000"), &none).is_err());
    }

    #[test]
    fn null_origins_are_refused_and_missing_ones_pass() {
        let none = allowed(&[]);
        assert_eq!(
            check(Some("null"), Some("localhost:4000"), &none),
            Err(OriginRefused::Null)
        );
        assert_eq!(check(None, Some("meet.example.org"), &none), Ok(()));
    }

    #[test]
    fn listed_origins_pass() {
        let list = allowed(&["https://app.example.com/"]);
        assert_eq!(
            check(
                Some("https://APP.example.com"),
                Some("sfu.example.com"),
                &list
            ),
            Ok(())
        );
        assert!(check(
            Some("https://other.example.com"),
            Some("sfu.example.com"),
            &list
        )
        .is_err());
    }

    #[test]
    fn loopback_pages_reach_a_loopback_server() {
        let none = allowed(&[]);
        assert_eq!(
            check(Some("http://localhost:8080"), Some("127.0.0.1:4000"), &none),
            Ok(())
        );
        assert_eq!(
            check(Some("http://[::1]:8080"), Some("localhost:4000"), &none),
            Ok(())
        );
        // A loopback page is nobody's on a server reached by its public name.
        assert!(check(
            Some("http://localhost:8080"),
            Some("meet.example.org"),
            &none
        )
        .is_err());
        assert!(check(
            Some("http://localhost.evil.example"),
            Some("localhost:4000"),
            &none
        )
        .is_err());
    }
}
