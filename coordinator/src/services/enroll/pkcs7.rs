//! The PKCS7 (CMS `SignedData`) signature IMDSv2 serves at `/latest/dynamic/instance-identity/rsa2048`,
//! parsed by hand (BER, as AWS encodes it: indefinite lengths and constructed OCTET STRINGs are
//! accepted) and verified with aws-lc-rs against *pinned* signer certificates only: the
//! certificates embedded in the message are ignored, so whoever made the message can't choose
//! whom we trust.
//!
//! What is checked: RSA PKCS#1 v1.5 over SHA-256/384/512; with signed attributes (as AWS and
//! `openssl smime` produce), the `messageDigest` attribute equals the digest of the content and
//! the signature covers the DER of the attributes; without, it covers the content. The content
//! the signature covers is returned, so the caller can compare it with the document byte for byte.

use aws_lc_rs::{digest, signature};
use base64::Engine;

const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
const OID_MESSAGE_DIGEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const OID_SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const OCTET_STRING_CONSTRUCTED: u8 = 0x24;
const CONTEXT_0: u8 = 0xa0;
const CONTEXT_1: u8 = 0xa1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Pkcs7Error {
    #[error("not base64 or PEM: {0}")]
    Encoding(String),
    #[error("malformed PKCS7: {0}")]
    Malformed(&'static str),
    #[error("unsupported PKCS7: {0}")]
    Unsupported(&'static str),
    #[error("the messageDigest attribute does not match the content")]
    Digest,
    #[error("the signature does not verify with any trusted signer certificate")]
    BadSignature,
}

/// A parsed `SignedData` with one signer.
#[derive(Debug, Clone)]
pub struct SignedData {
    /// The encapsulated content; `None` when detached.
    pub content: Option<Vec<u8>>,
    digest: &'static digest::Algorithm,
    verify: &'static signature::RsaParameters,
    /// Signed attributes re-tagged as a SET (what the signature covers), if present.
    signed_attrs: Option<Vec<u8>>,
    message_digest: Option<Vec<u8>>,
    signature: Vec<u8>,
}

/// IMDSv2 serves base64 of DER without PEM armour; armour and whitespace are tolerated.
pub fn decode(text: &[u8]) -> Result<Vec<u8>, Pkcs7Error> {
    let text = std::str::from_utf8(text).map_err(|_| Pkcs7Error::Encoding("not UTF-8".into()))?;
    let body: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("-----"))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map_err(|e| Pkcs7Error::Encoding(e.to_string()))
}

impl SignedData {
    pub fn parse(der: &[u8]) -> Result<Self, Pkcs7Error> {
        let (info, _) = Tlv::read(der)?;
        let mut info = info
            .expect(SEQUENCE, "ContentInfo is not a SEQUENCE")?
            .children();
        let oid = info
            .next_tlv()?
            .expect(OID, "ContentInfo has no content type")?;
        if oid.content != OID_SIGNED_DATA {
            return Err(Pkcs7Error::Unsupported("content type is not signedData"));
        }
        let explicit = info
            .next_tlv()?
            .expect(CONTEXT_0, "ContentInfo has no content")?;
        let (signed, _) = Tlv::read(explicit.content)?;
        let mut signed = signed
            .expect(SEQUENCE, "SignedData is not a SEQUENCE")?
            .children();
        signed.next_tlv()?.expect(INTEGER, "SignedData version")?;
        signed
            .next_tlv()?
            .expect(SET, "SignedData digestAlgorithms")?;
        let mut encap = signed
            .next_tlv()?
            .expect(SEQUENCE, "SignedData encapContentInfo")?
            .children();
        encap.next_tlv()?.expect(OID, "eContentType")?;
        let content = match encap.next_tlv_opt()? {
            Some(explicit) => {
                let explicit = explicit.expect(CONTEXT_0, "eContent tag")?;
                let (octets, _) = Tlv::read(explicit.content)?;
                Some(octets.octets()?)
            }
            None => None,
        };
        let mut next = signed.next_tlv()?;
        // certificates [0] and crls [1] are skipped: only pinned signers are trusted.
        while next.tag == CONTEXT_0 || next.tag == CONTEXT_1 {
            next = signed.next_tlv()?;
        }
        let mut signers = next.expect(SET, "SignedData signerInfos")?.children();
        let signer = signers.next_tlv()?;
        if signers.next_tlv_opt()?.is_some() {
            return Err(Pkcs7Error::Unsupported("more than one signer"));
        }
        let mut signer = signer.expect(SEQUENCE, "SignerInfo")?.children();
        signer.next_tlv()?.expect(INTEGER, "SignerInfo version")?;
        signer.next_tlv()?; // sid: issuerAndSerialNumber or subjectKeyIdentifier
        let mut digest_alg = signer
            .next_tlv()?
            .expect(SEQUENCE, "SignerInfo digestAlgorithm")?
            .children();
        let digest_oid = digest_alg.next_tlv()?.expect(OID, "digest algorithm")?;
        let (digest, verify): (_, &'static signature::RsaParameters) = match digest_oid.content {
            OID_SHA256 => (&digest::SHA256, &signature::RSA_PKCS1_2048_8192_SHA256),
            OID_SHA384 => (&digest::SHA384, &signature::RSA_PKCS1_2048_8192_SHA384),
            OID_SHA512 => (&digest::SHA512, &signature::RSA_PKCS1_2048_8192_SHA512),
            _ => return Err(Pkcs7Error::Unsupported("digest algorithm (want SHA-2)")),
        };
        let mut next = signer.next_tlv()?;
        let mut signed_attrs = None;
        let mut message_digest = None;
        if next.tag == CONTEXT_0 {
            if next.indefinite {
                return Err(Pkcs7Error::Malformed("signed attributes are not DER"));
            }
            let mut der = next.raw.to_vec();
            der[0] = SET;
            signed_attrs = Some(der);
            let mut attrs = next.children();
            while let Some(attr) = attrs.next_tlv_opt()? {
                let mut attr = attr.expect(SEQUENCE, "Attribute")?.children();
                let oid = attr.next_tlv()?.expect(OID, "Attribute type")?;
                if oid.content == OID_MESSAGE_DIGEST {
                    let mut values = attr.next_tlv()?.expect(SET, "Attribute values")?.children();
                    let value = values.next_tlv()?;
                    message_digest = Some(value.octets()?);
                }
            }
            if message_digest.is_none() {
                return Err(Pkcs7Error::Malformed(
                    "signed attributes without messageDigest",
                ));
            }
            next = signer.next_tlv()?;
        }
        // signatureAlgorithm: rsaEncryption or shaNNNWithRSAEncryption; the key decides.
        next.expect(SEQUENCE, "SignerInfo signatureAlgorithm")?;
        let signature = signer.next_tlv()?.octets()?;
        Ok(Self {
            content,
            digest,
            verify,
            signed_attrs,
            message_digest,
            signature,
        })
    }

    /// Verifies the signature over `content` (the encapsulated content, or the detached one the
    /// caller supplies) with the RSA key of one of `signers` (DER certificates).
    pub fn verify(&self, content: &[u8], signers: &[Vec<u8>]) -> Result<(), Pkcs7Error> {
        let message: &[u8] = match (&self.signed_attrs, &self.message_digest) {
            (Some(attrs), Some(expected)) => {
                if digest::digest(self.digest, content).as_ref() != expected.as_slice() {
                    return Err(Pkcs7Error::Digest);
                }
                attrs
            }
            _ => content,
        };
        for cert in signers {
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert) else {
                continue;
            };
            let key = &cert.public_key().subject_public_key.data;
            if signature::UnparsedPublicKey::new(self.verify, key)
                .verify(message, &self.signature)
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(Pkcs7Error::BadSignature)
    }
}

/// One BER element.
#[derive(Debug, Clone, Copy)]
struct Tlv<'a> {
    tag: u8,
    /// The content octets (without the end-of-contents marker when indefinite).
    content: &'a [u8],
    /// The whole element, header included.
    raw: &'a [u8],
    indefinite: bool,
}

const MAX_DEPTH: usize = 32;

impl<'a> Tlv<'a> {
    fn read(input: &'a [u8]) -> Result<(Self, &'a [u8]), Pkcs7Error> {
        Self::read_depth(input, 0)
    }

    fn read_depth(input: &'a [u8], depth: usize) -> Result<(Self, &'a [u8]), Pkcs7Error> {
        if depth > MAX_DEPTH {
            return Err(Pkcs7Error::Malformed("nested too deep"));
        }
        let [tag, len0, ..] = *input else {
            return Err(Pkcs7Error::Malformed("truncated header"));
        };
        if tag & 0x1f == 0x1f {
            return Err(Pkcs7Error::Unsupported("high tag numbers"));
        }
        let mut pos = 2;
        if len0 == 0x80 {
            if tag & 0x20 == 0 {
                return Err(Pkcs7Error::Malformed("indefinite length on a primitive"));
            }
            let mut rest = &input[pos..];
            loop {
                if rest.starts_with(&[0, 0]) {
                    let content_len = input.len() - pos - rest.len();
                    let end = pos + content_len + 2;
                    return Ok((
                        Tlv {
                            tag,
                            content: &input[pos..pos + content_len],
                            raw: &input[..end],
                            indefinite: true,
                        },
                        &input[end..],
                    ));
                }
                let (_, after) = Self::read_depth(rest, depth + 1)?;
                rest = after;
            }
        }
        let len = if len0 & 0x80 == 0 {
            usize::from(len0)
        } else {
            let n = usize::from(len0 & 0x7f);
            if n == 0 || n > 4 || input.len() < pos + n {
                return Err(Pkcs7Error::Malformed("bad length"));
            }
            let len = input[pos..pos + n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            pos += n;
            len
        };
        let end = pos
            .checked_add(len)
            .filter(|end| *end <= input.len())
            .ok_or(Pkcs7Error::Malformed("length past the end"))?;
        Ok((
            Tlv {
                tag,
                content: &input[pos..end],
                raw: &input[..end],
                indefinite: false,
            },
            &input[end..],
        ))
    }

    fn expect(self, tag: u8, what: &'static str) -> Result<Self, Pkcs7Error> {
        if self.tag == tag {
            Ok(self)
        } else {
            Err(Pkcs7Error::Malformed(what))
        }
    }

    fn children(self) -> Children<'a> {
        Children(self.content)
    }

    /// An OCTET STRING's bytes, primitive or (BER) constructed from chunks.
    fn octets(self) -> Result<Vec<u8>, Pkcs7Error> {
        match self.tag {
            OCTET_STRING => Ok(self.content.to_vec()),
            OCTET_STRING_CONSTRUCTED => {
                let mut out = Vec::new();
                let mut chunks = self.children();
                while let Some(chunk) = chunks.next_tlv_opt()? {
                    out.extend(chunk.octets()?);
                }
                Ok(out)
            }
            _ => Err(Pkcs7Error::Malformed("expected an OCTET STRING")),
        }
    }
}

struct Children<'a>(&'a [u8]);

impl<'a> Children<'a> {
    fn next_tlv_opt(&mut self) -> Result<Option<Tlv<'a>>, Pkcs7Error> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let (tlv, rest) = Tlv::read(self.0)?;
        self.0 = rest;
        Ok(Some(tlv))
    }

    fn next_tlv(&mut self) -> Result<Tlv<'a>, Pkcs7Error> {
        self.next_tlv_opt()?
            .ok_or(Pkcs7Error::Malformed("missing element"))
    }
}

/// Makes PKCS7 signatures the way AWS does (signed attributes, SHA-256, content embedded), for
/// tests and the enrollment benchmark.
#[cfg(any(test, feature = "test-support"))]
pub mod testing {
    use rcgen::SigningKey;

    use super::*;

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(content);
        out
    }

    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    /// A DER `SignedData` over `content`, signed with `key` (RSA, SHA-256). With `embed`, the
    /// content travels inside (as from IMDSv2); without, it is detached.
    pub fn sign(content: &[u8], key: &rcgen::KeyPair, embed: bool) -> Vec<u8> {
        let sha256 = tlv(OID, OID_SHA256);
        let alg = tlv(SEQUENCE, &cat(&[sha256, vec![0x05, 0x00]]));
        let data_oid = tlv(OID, &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01]);
        let content_type_attr = tlv(
            SEQUENCE,
            &cat(&[
                tlv(OID, &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x03]),
                tlv(SET, &data_oid),
            ]),
        );
        let hash = digest::digest(&digest::SHA256, content);
        let digest_attr = tlv(
            SEQUENCE,
            &cat(&[
                tlv(OID, OID_MESSAGE_DIGEST),
                tlv(SET, &tlv(OCTET_STRING, hash.as_ref())),
            ]),
        );
        let attrs_body = cat(&[content_type_attr, digest_attr]);
        let to_sign = tlv(SET, &attrs_body);
        let signature = key.sign(&to_sign).expect("RSA signing");
        let rsa = tlv(
            SEQUENCE,
            &cat(&[
                tlv(OID, &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01]),
                vec![0x05, 0x00],
            ]),
        );
        // sid: a placeholder issuerAndSerialNumber (verification never looks at it).
        let sid = tlv(SEQUENCE, &cat(&[tlv(SEQUENCE, &[]), tlv(INTEGER, &[0x01])]));
        let signer = tlv(
            SEQUENCE,
            &cat(&[
                tlv(INTEGER, &[0x01]),
                sid,
                alg.clone(),
                tlv(CONTEXT_0, &attrs_body),
                rsa,
                tlv(OCTET_STRING, &signature),
            ]),
        );
        let mut encap = vec![data_oid];
        if embed {
            encap.push(tlv(CONTEXT_0, &tlv(OCTET_STRING, content)));
        }
        let signed = tlv(
            SEQUENCE,
            &cat(&[
                tlv(INTEGER, &[0x01]),
                tlv(SET, &alg),
                tlv(SEQUENCE, &encap.concat()),
                tlv(SET, &signer),
            ]),
        );
        tlv(
            SEQUENCE,
            &cat(&[tlv(OID, OID_SIGNED_DATA), tlv(CONTEXT_0, &signed)]),
        )
    }

    /// Base64 of [`sign`], as IMDSv2 serves it.
    pub fn sign_base64(content: &[u8], key: &rcgen::KeyPair) -> String {
        base64::engine::general_purpose::STANDARD.encode(sign(content, key, true))
    }

    /// A self-signed RSA-2048 signer certificate (DER) and its key, like AWS's region ones.
    pub fn signer(name: &str) -> (Vec<u8>, rcgen::KeyPair) {
        let key =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .expect("RSA key");
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-signed");
        (cert.der().to_vec(), key)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn a_signature_made_like_aws_verifies_and_yields_the_content() {
        let (cert, key) = signer("test region");
        let document = br#"{"instanceId":"i-1"}"#;
        let der = decode(sign_base64(document, &key).as_bytes()).expect("base64");
        let signed = SignedData::parse(&der).expect("parses");
        assert_eq!(signed.content.as_deref(), Some(&document[..]));
        signed.verify(document, &[cert]).expect("verifies");
    }

    #[test]
    fn another_key_or_other_content_does_not_verify() {
        let (_, key) = signer("a");
        let (other, _) = signer("b");
        let document = b"doc";
        let signed = SignedData::parse(&sign(document, &key, true)).expect("parses");
        assert_eq!(
            signed.verify(document, &[other]),
            Err(Pkcs7Error::BadSignature)
        );
        let (cert, key) = signer("c");
        let signed = SignedData::parse(&sign(document, &key, false)).expect("parses");
        assert!(signed.content.is_none());
        assert_eq!(
            signed.verify(b"other", std::slice::from_ref(&cert)),
            Err(Pkcs7Error::Digest)
        );
        signed.verify(document, &[cert]).expect("detached verifies");
    }

    #[test]
    fn openssl_stream_ber_like_imds_serves_parses_and_verifies() {
        use rustls_pki_types::{CertificateDer, pem::PemObject};
        let document = include_bytes!("testdata/document");
        let served = include_bytes!("testdata/rsa2048");
        let signer = CertificateDer::from_pem_slice(include_bytes!("testdata/signer.pem"))
            .expect("signer")
            .to_vec();
        let der = decode(served).expect("base64");
        assert_eq!(
            &der[..2],
            &[0x30, 0x80],
            "indefinite-length BER, as AWS sends"
        );
        let signed = SignedData::parse(&der).expect("parses");
        assert_eq!(signed.content.as_deref(), Some(&document[..]));
        signed
            .verify(document, std::slice::from_ref(&signer))
            .expect("verifies");
        let mut other = document.to_vec();
        other[10] ^= 1;
        assert_eq!(signed.verify(&other, &[signer]), Err(Pkcs7Error::Digest));
    }

    proptest::proptest! {
        /// Anything at all on the unauthenticated listener: an error, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = SignedData::parse(&bytes);
            let _ = decode(&bytes);
        }

        /// Whatever one byte of a genuine message is changed to, what verifies is the document
        /// that was signed: never other content.
        #[test]
        fn a_changed_byte_never_verifies_other_content(at in 0usize..10_000, to in proptest::num::u8::ANY) {
            let (cert, der) = &*SIGNED;
            let mut changed = der.clone();
            let at = at % changed.len();
            changed[at] = to;
            if let Ok(signed) = SignedData::parse(&changed) {
                let content = signed.content.clone().unwrap_or_default();
                if signed.verify(&content, std::slice::from_ref(cert)).is_ok() {
                    proptest::prop_assert_eq!(content.as_slice(), DOCUMENT);
                }
            }
        }
    }

    const DOCUMENT: &[u8] = br#"{"instanceId":"i-0123456789abcdef0","region":"eu-west-1"}"#;

    static SIGNED: std::sync::LazyLock<(Vec<u8>, Vec<u8>)> = std::sync::LazyLock::new(|| {
        let (cert, key) = signer("proptest");
        (cert, sign(DOCUMENT, &key, true))
    });

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        for bytes in [
            &b""[..],
            &[0x30],
            &[0x30, 0x80],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x03, 0x06, 0x01],
            &[0x24, 0x80, 0x24, 0x80, 0x00, 0x00],
        ] {
            assert!(SignedData::parse(bytes).is_err(), "{bytes:?}");
        }
        // Truncations of a valid message never panic.
        let (_, key) = signer("t");
        let der = sign(b"x", &key, true);
        for n in 0..der.len() {
            let _ = SignedData::parse(&der[..n]);
        }
    }

    #[test]
    fn ber_indefinite_lengths_and_chunked_content_parse() {
        let (cert, key) = signer("ber");
        let document = b"chunked document";
        let der = sign(document, &key, true);
        // The eContent OCTET STRING as a BER encoder may send it: constructed, indefinite, two chunks.
        let chunked = [
            &[OCTET_STRING_CONSTRUCTED, 0x80, OCTET_STRING, 7][..],
            &document[..7],
            &[OCTET_STRING, (document.len() - 7) as u8],
            &document[7..],
            &[0, 0],
        ]
        .concat();
        let (tlv, rest) = Tlv::read(&chunked).expect("reads");
        assert!(rest.is_empty());
        assert_eq!(tlv.octets().expect("octets"), document);
        let signed = SignedData::parse(&der).expect("parses");
        signed.verify(document, &[cert]).expect("verifies");
    }
}
