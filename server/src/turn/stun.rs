//! STUN messages (RFC 8489) as the TURN server reads and writes them, and TURN's ChannelData
//! and stream framing (RFC 8656): a message is parsed in place (attributes are borrowed slices
//! of the datagram), and replies are written into a buffer the caller reuses. Long-term credentials' MESSAGE-INTEGRITY (HMAC-SHA1) is checked and
//! written here; FINGERPRINT is accepted and not required.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use thiserror::Error;

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const HEADER_LEN: usize = 20;
/// A MESSAGE-INTEGRITY attribute: its 4-byte header and the 20-byte HMAC-SHA1.
const INTEGRITY_LEN: usize = 24;

/// The methods the server knows (RFC 8489 and RFC 8656).
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// Attribute types.
pub mod attr {
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
}

/// The four kinds of STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        }
    }
}

/// Why bytes are not a STUN message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StunError {
    #[error("shorter than a STUN header")]
    Short,
    #[error("not a STUN message (first bits or magic cookie)")]
    NotStun,
    #[error("the length field says {0} bytes, the message has {1}")]
    Length(usize, usize),
    #[error("an attribute runs past the end of the message")]
    Attribute,
}

/// A parsed message, borrowing its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub method: u16,
    pub class: Class,
    pub transaction: [u8; 12],
    bytes: &'a [u8],
}

impl<'a> Message<'a> {
    /// Parses one whole message (`bytes` may not hold more than it).
    pub fn parse(bytes: &'a [u8]) -> Result<Message<'a>, StunError> {
        if bytes.len() < HEADER_LEN {
            return Err(StunError::Short);
        }
        let kind = u16::from_be_bytes([bytes[0], bytes[1]]);
        let cookie = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if kind & 0xC000 != 0 || cookie != MAGIC_COOKIE {
            return Err(StunError::NotStun);
        }
        let length = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        if length % 4 != 0 || HEADER_LEN + length != bytes.len() {
            return Err(StunError::Length(length, bytes.len() - HEADER_LEN));
        }
        let class = match ((kind >> 7) & 0b10) | ((kind >> 4) & 0b01) {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::Success,
            _ => Class::Error,
        };
        let method = (kind & 0x000F) | ((kind >> 1) & 0x0070) | ((kind >> 2) & 0x0F80);
        let mut transaction = [0; 12];
        transaction.copy_from_slice(&bytes[8..20]);
        let message = Message {
            method,
            class,
            transaction,
            bytes,
        };
        for attribute in message.attributes() {
            attribute?;
        }
        Ok(message)
    }

    /// The attributes in order: type, value and the value's offset in the message.
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            bytes: self.bytes,
            offset: HEADER_LEN,
        }
    }

    /// The first attribute of type `kind`, before any MESSAGE-INTEGRITY (what follows it is
    /// not covered by it, so it is not read).
    pub fn get(&self, kind: u16) -> Option<&'a [u8]> {
        self.attributes()
            .map_while(Result::ok)
            .take_while(|attribute| {
                attribute.kind != attr::MESSAGE_INTEGRITY || kind == attr::MESSAGE_INTEGRITY
            })
            .find(|attribute| attribute.kind == kind)
            .map(|attribute| attribute.value)
    }

    pub fn text(&self, kind: u16) -> Option<&'a str> {
        self.get(kind)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    pub fn u32(&self, kind: u16) -> Option<u32> {
        let value: [u8; 4] = self.get(kind)?.try_into().ok()?;
        Some(u32::from_be_bytes(value))
    }

    /// An XOR-…-ADDRESS attribute, decoded.
    pub fn xor_address(&self, kind: u16) -> Option<SocketAddr> {
        decode_xor_address(self.get(kind)?, &self.transaction)
    }

    /// Every XOR-…-ADDRESS attribute of `kind` (CreatePermission may carry several).
    pub fn xor_addresses(&self, kind: u16) -> impl Iterator<Item = Option<SocketAddr>> + '_ {
        self.attributes()
            .map_while(Result::ok)
            .filter(move |attribute| attribute.kind == kind)
            .map(|attribute| decode_xor_address(attribute.value, &self.transaction))
    }

    /// Whether MESSAGE-INTEGRITY is present and right for `key`.
    pub fn integrity_matches(&self, key: &[u8]) -> bool {
        let Some(attribute) = self
            .attributes()
            .map_while(Result::ok)
            .find(|attribute| attribute.kind == attr::MESSAGE_INTEGRITY)
        else {
            return false;
        };
        let start = attribute.offset - 4;
        if attribute.value.len() != 20 {
            return false;
        }
        let mut mac = hmac_sha1(key);
        // The length field counts up to the end of MESSAGE-INTEGRITY, as if nothing followed.
        let length = (start + INTEGRITY_LEN - HEADER_LEN) as u16;
        mac.update(&self.bytes[..2]);
        mac.update(&length.to_be_bytes());
        mac.update(&self.bytes[4..start]);
        mac.verify_slice(attribute.value).is_ok()
    }

    pub fn has(&self, kind: u16) -> bool {
        self.get(kind).is_some()
    }
}

/// One attribute of a [`Message`].
#[derive(Debug, Clone, Copy)]
pub struct Attribute<'a> {
    pub kind: u16,
    pub value: &'a [u8],
    offset: usize,
}

pub struct Attributes<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<Attribute<'a>, StunError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.bytes.get(self.offset..)?;
        if rest.is_empty() {
            return None;
        }
        if rest.len() < 4 {
            self.offset = self.bytes.len();
            return Some(Err(StunError::Attribute));
        }
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let length = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let padded = 4 + length.div_ceil(4) * 4;
        if rest.len() < padded {
            self.offset = self.bytes.len();
            return Some(Err(StunError::Attribute));
        }
        let offset = self.offset + 4;
        self.offset += padded;
        Some(Ok(Attribute {
            kind,
            value: &rest[4..4 + length],
            offset,
        }))
    }
}

fn decode_xor_address(value: &[u8], transaction: &[u8; 12]) -> Option<SocketAddr> {
    if value.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([value[2], value[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match (value[1], value.len()) {
        (0x01, 8) => {
            let raw = u32::from_be_bytes([value[4], value[5], value[6], value[7]]) ^ MAGIC_COOKIE;
            IpAddr::V4(Ipv4Addr::from(raw))
        }
        (0x02, 20) => {
            let mut raw = [0; 16];
            for (i, byte) in raw.iter_mut().enumerate() {
                *byte = value[4 + i] ^ xor_pad(transaction)[i];
            }
            IpAddr::V6(Ipv6Addr::from(raw))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// What IPv6 addresses are XORed with: the magic cookie, then the transaction id.
fn xor_pad(transaction: &[u8; 12]) -> [u8; 16] {
    let mut pad = [0; 16];
    pad[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    pad[4..].copy_from_slice(transaction);
    pad
}

fn hmac_sha1(key: &[u8]) -> Hmac<sha1::Sha1> {
    Hmac::<sha1::Sha1>::new_from_slice(key).expect("HMAC takes a key of any length")
}

/// Writes one message into a buffer the caller keeps (cleared first).
pub struct Writer<'b> {
    buf: &'b mut Vec<u8>,
    transaction: [u8; 12],
}

impl<'b> Writer<'b> {
    pub fn new(
        buf: &'b mut Vec<u8>,
        method: u16,
        class: Class,
        transaction: [u8; 12],
    ) -> Writer<'b> {
        buf.clear();
        let class = class.bits();
        let kind = (method & 0x000F)
            | ((method & 0x0070) << 1)
            | ((method & 0x0F80) << 2)
            | ((class & 0b01) << 4)
            | ((class & 0b10) << 7);
        buf.extend_from_slice(&kind.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&transaction);
        Writer { buf, transaction }
    }

    pub fn attribute(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&kind.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        let padding = (4 - value.len() % 4) % 4;
        self.buf.extend_from_slice(&[0; 3][..padding]);
        self.set_length();
        self
    }

    pub fn u32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.attribute(kind, &value.to_be_bytes())
    }

    pub fn xor_address(&mut self, kind: u16, address: SocketAddr) -> &mut Self {
        let port = address.port() ^ (MAGIC_COOKIE >> 16) as u16;
        let mut value = [0u8; 20];
        value[2..4].copy_from_slice(&port.to_be_bytes());
        let length = match address.ip() {
            IpAddr::V4(ip) => {
                value[1] = 0x01;
                value[4..8].copy_from_slice(&(u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes());
                8
            }
            IpAddr::V6(ip) => {
                value[1] = 0x02;
                let pad = xor_pad(&self.transaction);
                for (i, byte) in ip.octets().iter().enumerate() {
                    value[4 + i] = byte ^ pad[i];
                }
                20
            }
        };
        self.attribute(kind, &value[..length])
    }

    /// ERROR-CODE with its reason phrase.
    pub fn error(&mut self, code: u16, reason: &str) -> &mut Self {
        let mut value = Vec::with_capacity(4 + reason.len());
        value.extend_from_slice(&[0, 0, (code / 100) as u8, (code % 100) as u8]);
        value.extend_from_slice(reason.as_bytes());
        self.attribute(attr::ERROR_CODE, &value)
    }

    /// Appends MESSAGE-INTEGRITY over everything written so far; nothing else may follow.
    pub fn integrity(&mut self, key: &[u8]) {
        let start = self.buf.len();
        self.buf
            .extend_from_slice(&attr::MESSAGE_INTEGRITY.to_be_bytes());
        self.buf.extend_from_slice(&20u16.to_be_bytes());
        self.set_length_to(start + INTEGRITY_LEN);
        let mut mac = hmac_sha1(key);
        mac.update(&self.buf[..start]);
        self.buf.extend_from_slice(&mac.finalize().into_bytes());
    }

    fn set_length(&mut self) {
        let end = self.buf.len();
        self.set_length_to(end);
    }

    fn set_length_to(&mut self, end: usize) {
        let length = (end - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&length.to_be_bytes());
    }
}

/// The long-term credential key: MD5(username ":" realm ":" password).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    use md5::Digest;
    let mut md5 = md5::Md5::new();
    md5.update(username.as_bytes());
    md5.update(b":");
    md5.update(realm.as_bytes());
    md5.update(b":");
    md5.update(password.as_bytes());
    md5.finalize().into()
}

/// Splits ChannelData into its channel number and payload (the length field says where the
/// payload ends; padding after it, on TCP and TLS, is not part of it).
pub fn channel_data(bytes: &[u8]) -> Option<(u16, &[u8])> {
    let header: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    let number = u16::from_be_bytes([header[0], header[1]]);
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let payload = bytes.get(4..4 + length)?;
    (0x4000..=0x4FFF)
        .contains(&number)
        .then_some((number, payload))
}

/// The length of the frame at the start of `input` on a stream: `None` when its header is not
/// all there yet, `Some(None)` when it is neither STUN nor ChannelData.
pub fn frame_length(input: &[u8]) -> Option<Option<usize>> {
    let header = input.get(..4)?;
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    Some(match header[0] >> 6 {
        0b00 => Some(HEADER_LEN + length),
        0b01 => Some(4 + length.div_ceil(4) * 4),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5769 §2.4: a request with long-term authentication (the password after SASLprep).
    const RFC5769_LONG_TERM: &str = "000100602112a44278ad3433c6ad72c029da412e\
        00060012e3839ee38388e383aae38383e382afe382b900000015001c662f2f3439396b393534\
        64364f4c33346f4c394653547679363473410014000b6578616d706c652e6f726700000800\
        14f67024656dd64a3e02b8e0712e85c9a28ca89666";

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn reads_the_rfc_5769_long_term_request_and_checks_its_integrity() {
        let bytes = hex(RFC5769_LONG_TERM);
        let message = Message::parse(&bytes).unwrap();
        assert_eq!(
            (message.method, message.class),
            (method::BINDING, Class::Request)
        );
        let username = message.text(attr::USERNAME).unwrap();
        assert_eq!(username, "マトリックス");
        assert_eq!(message.text(attr::REALM), Some("example.org"));
        assert_eq!(
            message.text(attr::NONCE),
            Some("f//499k954d6OL34oL9FSTvy64sA")
        );
        let key = long_term_key(username, "example.org", "TheMatrIX");
        assert!(message.integrity_matches(&key));
        assert!(!message.integrity_matches(&long_term_key(username, "example.org", "wrong")));
    }

    #[test]
    fn a_written_message_reads_back_with_its_integrity() {
        let mut buf = Vec::new();
        let transaction = [7; 12];
        let key = long_term_key("1700000000:peer", "videoroom", "secret");
        let v4: SocketAddr = "203.0.113.7:50012".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
        Writer::new(&mut buf, method::ALLOCATE, Class::Error, transaction)
            .xor_address(attr::XOR_RELAYED_ADDRESS, v4)
            .xor_address(attr::XOR_PEER_ADDRESS, v6)
            .u32(attr::LIFETIME, 600)
            .error(438, "Stale Nonce")
            .integrity(&key);
        let message = Message::parse(&buf).unwrap();
        assert_eq!(
            (message.method, message.class),
            (method::ALLOCATE, Class::Error)
        );
        assert_eq!(message.transaction, transaction);
        assert_eq!(message.xor_address(attr::XOR_RELAYED_ADDRESS), Some(v4));
        assert_eq!(message.xor_address(attr::XOR_PEER_ADDRESS), Some(v6));
        assert_eq!(message.u32(attr::LIFETIME), Some(600));
        assert_eq!(
            message.get(attr::ERROR_CODE),
            Some(&b"\0\0\x04\x26Stale Nonce"[..])
        );
        assert!(message.integrity_matches(&key));
        buf[25] ^= 1;
        assert!(!Message::parse(&buf).unwrap().integrity_matches(&key));
    }

    #[test]
    fn what_is_not_a_whole_message_is_refused() {
        let bytes = hex(RFC5769_LONG_TERM);
        assert_eq!(Message::parse(&bytes[..10]).unwrap_err(), StunError::Short);
        assert!(matches!(
            Message::parse(&bytes[..bytes.len() - 4]),
            Err(StunError::Length(..))
        ));
        let mut channel_data = bytes.clone();
        channel_data[0] = 0x40;
        assert_eq!(
            Message::parse(&channel_data).unwrap_err(),
            StunError::NotStun
        );
        let mut long_attribute = bytes.clone();
        long_attribute[22] = 0xff; // USERNAME says it runs on past the message
        assert_eq!(
            Message::parse(&long_attribute).unwrap_err(),
            StunError::Attribute
        );
    }

    #[test]
    fn channel_data_is_read_up_to_its_length() {
        assert_eq!(
            channel_data(&[0x40, 0x01, 0x00, 0x03, 1, 2, 3, 0]),
            Some((0x4001, &[1, 2, 3][..]))
        );
        assert_eq!(channel_data(&[0x40, 0x01, 0x00, 0x05, 1, 2, 3]), None);
        assert_eq!(channel_data(&[0x50, 0x00, 0x00, 0x00]), None);
        assert_eq!(channel_data(&[0x40]), None);
    }

    #[test]
    fn stream_frames_are_told_apart_by_their_first_bits() {
        assert_eq!(frame_length(&[0x00, 0x03, 0x00, 0x08]), Some(Some(28)));
        assert_eq!(frame_length(&[0x40, 0x00, 0x00, 0x05]), Some(Some(12)));
        assert_eq!(frame_length(&[0x40, 0x00, 0x00, 0x08]), Some(Some(12)));
        assert_eq!(frame_length(&[0x80, 0x00, 0x00, 0x00]), Some(None));
        assert_eq!(frame_length(&[0x00, 0x01]), None);
    }
}
