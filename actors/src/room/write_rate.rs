//! A room's writes per second, measured between two looks at its status: nothing is counted on
//! the write path, the sequence number already tells how many changes arrived.

use std::time::{Duration, Instant};

/// Looks closer together than this report the rate of the last longer window, so that a page
/// polling every second and a script polling at the same time do not see noise.
const MIN_WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct WriteRate {
    mark: Option<(Instant, u64)>,
    rate: f64,
}

impl WriteRate {
    /// Changes per second since the previous look, with the room's sequence number now at `seq`.
    pub fn read(&mut self, seq: u64, now: Instant) -> f64 {
        match self.mark {
            None => self.mark = Some((now, seq)),
            Some((at, before)) => {
                let elapsed = now.saturating_duration_since(at);
                if elapsed >= MIN_WINDOW {
                    self.rate = seq.saturating_sub(before) as f64 / elapsed.as_secs_f64();
                    self.mark = Some((now, seq));
                }
            }
        }
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_taken_over_windows_of_at_least_a_second() {
        let t0 = Instant::now();
        let mut r = WriteRate::default();
        assert_eq!(r.read(10, t0), 0.0);
        // Too soon: still the previous window's rate.
        assert_eq!(r.read(15, t0 + Duration::from_millis(300)), 0.0);
        assert_eq!(r.read(30, t0 + Duration::from_secs(2)), 10.0);
        assert_eq!(r.read(31, t0 + Duration::from_millis(2500)), 10.0);
        assert_eq!(r.read(30, t0 + Duration::from_secs(4)), 0.0);
    }
}
