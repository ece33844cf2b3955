//! The little the room reads from a client's SDP offer: each m-line's kind, mid, direction,
//! codecs and header extensions. The peer connection parses the offer in full; the room only needs these to decide
//! which tracks a peer publishes and to refuse offers it cannot serve, with a clear reason.

use crate::media::codec::{Codec, MediaKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

/// One m-line of an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSection {
    /// `None` for `application` (data channel) sections, which the room ignores.
    pub kind: Option<MediaKind>,
    pub mid: Option<String>,
    pub direction: Direction,
    /// Codec names from `a=rtpmap`, lower-cased (`opus`, `vp8`, `h264`, `rtx`, …).
    pub codecs: Vec<String>,
    /// Header extensions from `a=extmap`: (id, URI).
    pub extensions: Vec<(u8, String)>,
}

impl MediaSection {
    /// The id the section gives the header extension `uri`, if it has it.
    pub fn extension_id(&self, uri: &str) -> Option<u8> {
        self.extensions
            .iter()
            .find(|(_, known)| known == uri)
            .map(|(id, _)| *id)
    }

    /// Whether the section offers a codec the SFU forwards for its kind.
    pub fn has_forwardable_codec(&self) -> bool {
        self.codecs.iter().any(|name| {
            Codec::from_sdp_name(name).is_some_and(|codec| Some(codec.kind()) == self.kind)
        })
    }
}

/// The media sections of `sdp`, in m-line order.
pub fn media_sections(sdp: &str) -> Vec<MediaSection> {
    let mut sections: Vec<MediaSection> = Vec::new();
    // Port 0 marks a rejected or stopped m-line, whatever its direction attribute says.
    let mut stopped: Vec<bool> = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if let Some(media) = line.strip_prefix("m=") {
            let mut fields = media.split_whitespace();
            let kind = match fields.next() {
                Some("audio") => Some(MediaKind::Audio),
                Some("video") => Some(MediaKind::Video),
                _ => None,
            };
            stopped.push(fields.next() == Some("0"));
            sections.push(MediaSection {
                kind,
                mid: None,
                direction: Direction::SendRecv,
                codecs: Vec::new(),
                extensions: Vec::new(),
            });
            continue;
        }
        let (Some(section), Some(attribute)) = (sections.last_mut(), line.strip_prefix("a="))
        else {
            continue;
        };
        match attribute {
            "sendrecv" => section.direction = Direction::SendRecv,
            "sendonly" => section.direction = Direction::SendOnly,
            "recvonly" => section.direction = Direction::RecvOnly,
            "inactive" => section.direction = Direction::Inactive,
            _ => {
                if let Some(mid) = attribute.strip_prefix("mid:") {
                    section.mid = Some(mid.to_owned());
                } else if let Some(rtpmap) = attribute.strip_prefix("rtpmap:") {
                    // `a=rtpmap:<pt> <name>/<clock>[/<channels>]`
                    if let Some(name) = rtpmap.split_whitespace().nth(1) {
                        let name = name.split('/').next().unwrap_or_default();
                        section.codecs.push(name.to_ascii_lowercase());
                    }
                } else if let Some(extmap) = attribute.strip_prefix("extmap:") {
                    // `a=extmap:<id>[/<direction>] <uri> [<attributes>]`
                    let mut fields = extmap.split_whitespace();
                    let id = fields
                        .next()
                        .and_then(|id| id.split('/').next())
                        .and_then(|id| id.parse().ok());
                    if let (Some(id), Some(uri)) = (id, fields.next()) {
                        section.extensions.push((id, uri.to_owned()));
                    }
                }
            }
        }
    }
    for (section, stopped) in sections.iter_mut().zip(stopped) {
        if stopped {
            section.direction = Direction::Inactive;
        }
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from a Chromium offer: audio and video sent, one video slot to receive on, and a
    /// stopped m-line.
    const OFFER: &str = "v=0\r\n\
        o=- 1 2 IN IP4 127.0.0.1\r\n\
        s=-\r\n\
        t=0 0\r\n\
        a=group:BUNDLE 0 1 2\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\n\
        a=mid:0\r\n\
        a=sendonly\r\n\
        a=rtpmap:111 opus/48000/2\r\n\
        a=rtpmap:63 red/48000/2\r\n\
        a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
        a=extmap:4/sendonly urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97 102\r\n\
        a=mid:1\r\n\
        a=sendonly\r\n\
        a=rtpmap:96 VP8/90000\r\n\
        a=rtpmap:97 rtx/90000\r\n\
        a=rtpmap:102 H264/90000\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
        a=mid:2\r\n\
        a=recvonly\r\n\
        a=rtpmap:96 VP8/90000\r\n\
        m=video 0 UDP/TLS/RTP/SAVPF 96\r\n\
        a=mid:3\r\n\
        a=sendonly\r\n\
        a=rtpmap:96 VP8/90000\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
        a=mid:4\r\n";

    #[test]
    fn reads_kind_mid_direction_codecs_and_extensions() {
        let sections = media_sections(OFFER);
        assert_eq!(sections.len(), 5);
        assert_eq!(
            sections[0],
            MediaSection {
                kind: Some(MediaKind::Audio),
                mid: Some("0".to_owned()),
                direction: Direction::SendOnly,
                codecs: vec!["opus".to_owned(), "red".to_owned()],
                extensions: vec![
                    (1, "urn:ietf:params:rtp-hdrext:ssrc-audio-level".to_owned()),
                    (4, "urn:ietf:params:rtp-hdrext:sdes:mid".to_owned()),
                ],
            }
        );
        assert_eq!(
            sections[0].extension_id("urn:ietf:params:rtp-hdrext:sdes:mid"),
            Some(4)
        );
        assert_eq!(
            sections[1].extension_id("urn:ietf:params:rtp-hdrext:sdes:mid"),
            None
        );
        assert_eq!(sections[1].codecs, ["vp8", "rtx", "h264"]);
        assert_eq!(sections[2].direction, Direction::RecvOnly);
        assert_eq!(
            sections[3].direction,
            Direction::Inactive,
            "port 0 is stopped"
        );
        assert_eq!(sections[4].kind, None);
        assert_eq!(sections[4].mid.as_deref(), Some("4"));
    }

    #[test]
    fn forwardable_codecs_are_opus_vp8_and_h264() {
        let sections = media_sections(OFFER);
        assert!(sections[0].has_forwardable_codec());
        assert!(sections[1].has_forwardable_codec());
        let g722_only = media_sections("m=audio 9 RTP/SAVPF 9\r\na=rtpmap:9 G722/8000\r\n");
        assert!(!g722_only[0].has_forwardable_codec());
        let av1_only = media_sections("m=video 9 RTP/SAVPF 45\r\na=rtpmap:45 AV1/90000\r\n");
        assert!(!av1_only[0].has_forwardable_codec());
    }

    #[test]
    fn garbage_yields_no_sections() {
        assert!(media_sections("").is_empty());
        assert!(media_sections("not sdp at all\na=sendonly\n").is_empty());
        let bad_extmaps = media_sections(
            "m=audio 9 RTP/SAVPF 111\na=extmap:x urn:a\na=extmap:300 urn:b\na=extmap:2\n",
        );
        assert!(bad_extmaps[0].extensions.is_empty());
        let no_direction = media_sections("m=audio 9 RTP/SAVPF 111\n");
        assert_eq!(no_direction[0].direction, Direction::SendRecv);
    }
}
