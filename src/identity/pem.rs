//! PEM helpers shared by the identity modules.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Every `CERTIFICATE` block in `pem`, in order. Other block types are skipped.
pub(crate) fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid PEM: {e}"))
}

/// PEM encoding of one DER certificate.
pub(crate) fn encode_certificate(der: &[u8]) -> String {
    encode("CERTIFICATE", der)
}

fn encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                b64.push(ALPHABET[((v >> (18 - 6 * i)) & 0x3f) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_round_trips_through_the_parser() {
        for len in [1usize, 2, 3, 4, 47, 48, 49, 300] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let pem = encode_certificate(&der);
            let back = certificates(pem.as_bytes()).expect("parses");
            assert_eq!(back.len(), 1);
            assert_eq!(back[0].as_ref(), der.as_slice(), "len {len}");
        }
    }
}
