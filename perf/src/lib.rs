//! Reproducible evaluation of Distributed Servers (filled by later work).
