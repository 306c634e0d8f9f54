"""What a run saw and how it is shown: health probes, the load balancer, the timeline and its picture, findings, the HTML report."""
