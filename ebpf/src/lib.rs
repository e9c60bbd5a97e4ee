//! The XDP program that redirects UDP packets for the media port range to the AF_XDP socket of the
//! receiving queue, and passes everything else (ARP, ICMP, SIP, gRPC) to the kernel.
//!
//! Not built yet: the media plane runs on its UDP socket backend until the AF_XDP backend lands.
//! This crate is in the workspace so the layout (and CI) already has its place.
#![forbid(unsafe_code)]
