from socialsync.daemon.events.bus import Event, EventBus, Subscription

__all__ = ["Event", "EventBus", "Subscription"]
