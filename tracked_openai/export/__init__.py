"""Export: records leave the caller's thread in O(1) and reach the sinks without loss."""
