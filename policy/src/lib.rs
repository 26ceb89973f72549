//! autoheal's decision engine (placeholder, being written).
