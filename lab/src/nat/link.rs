//! A one-way link as a FIFO delay line with jitter and random loss.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::Rng;

use super::config::LinkShape;

/// Packets in flight on one direction of a link, released in order.
#[derive(Debug)]
pub(crate) struct DelayLine<T> {
    shape: LinkShape,
    in_flight: VecDeque<(Instant, T)>,
    last_release: Option<Instant>,
}

impl<T> DelayLine<T> {
    pub(crate) fn new(shape: LinkShape) -> Self {
        Self {
            shape,
            in_flight: VecDeque::new(),
            last_release: None,
        }
    }

    /// Puts `item` on the link at `now`. Returns it back if the link lost it.
    pub(crate) fn send(&mut self, item: T, now: Instant, rng: &mut impl Rng) -> Result<(), T> {
        if self.shape.loss > 0.0 && rng.gen::<f64>() < self.shape.loss {
            return Err(item);
        }
        let mut delay = self.shape.delay;
        if !self.shape.jitter.is_zero() {
            let jitter = self.shape.jitter.as_secs_f64();
            let offset = rng.gen_range(-jitter..=jitter);
            delay = Duration::from_secs_f64((delay.as_secs_f64() + offset).max(0.0));
        }
        let mut release = now + delay;
        if let Some(last) = self.last_release {
            release = release.max(last);
        }
        self.last_release = Some(release);
        self.in_flight.push_back((release, item));
        Ok(())
    }

    /// When the next packet leaves the link.
    pub(crate) fn next_release(&self) -> Option<Instant> {
        self.in_flight.front().map(|(at, _)| *at)
    }

    /// The next packet whose release time has come, with that time.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, T)> {
        match self.in_flight.front() {
            Some((at, _)) if *at <= now => self.in_flight.pop_front(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn releases_after_the_delay_in_order() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut line = DelayLine::new(LinkShape {
            delay: ms(50),
            ..LinkShape::default()
        });
        let t0 = Instant::now();
        line.send(1, t0, &mut rng).unwrap();
        line.send(2, t0 + ms(10), &mut rng).unwrap();
        assert_eq!(line.next_release(), Some(t0 + ms(50)));
        assert_eq!(line.pop_due(t0 + ms(49)), None);
        assert_eq!(line.pop_due(t0 + ms(50)), Some((t0 + ms(50), 1)));
        assert_eq!(line.pop_due(t0 + ms(59)), None);
        assert_eq!(line.pop_due(t0 + ms(60)), Some((t0 + ms(60), 2)));
    }

    #[test]
    fn jitter_stays_in_bounds_and_never_reorders() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut line = DelayLine::new(LinkShape {
            delay: ms(20),
            jitter: ms(15),
            loss: 0.0,
        });
        let t0 = Instant::now();
        for i in 0..1000u32 {
            line.send(i, t0 + ms(u64::from(i)), &mut rng).unwrap();
        }
        let mut previous = t0;
        let mut seen = 0;
        while let Some((at, i)) = line.pop_due(t0 + Duration::from_secs(10)) {
            let sent = t0 + ms(u64::from(i));
            assert!(at >= previous, "packet {i} overtook an earlier one");
            assert!(
                at >= sent + ms(5),
                "packet {i} left earlier than delay - jitter"
            );
            previous = at;
            seen += 1;
        }
        assert_eq!(seen, 1000);
    }

    #[test]
    fn loss_rate_is_close_to_the_configured_probability() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut line = DelayLine::new(LinkShape {
            loss: 0.25,
            ..LinkShape::default()
        });
        let t0 = Instant::now();
        let lost = (0..10_000)
            .filter(|i| line.send(*i, t0, &mut rng).is_err())
            .count();
        assert!(
            (2_200..2_800).contains(&lost),
            "lost {lost} of 10000 at p=0.25"
        );
    }
}
