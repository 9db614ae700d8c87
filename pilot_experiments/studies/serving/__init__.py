"""Pilot study 4: stage-disaggregated LVLM serving (survey section 6, Appendix C, Table 4).

workloads      request shapes, arrival processes and the JSON-lines trace format
costs          stage latencies from the roofline model or from a measured profile
architectures  monolithic, E|P|D, EP|D, E|PD, modality-based and SM-multiplexed pools at equal GPUs
simulator      the SimPy discrete-event simulation of one architecture on one trace
metrics        TTFT, TPOT, SLO attainment, goodput, cost per successful request, energy per token
search         goodput by binary search over rate and the search over topologies and GPU splits
study          `python -m pilot_experiments serving`: architectures x workloads, Table 4 as numbers
deployment     a real encode / prefill / decode deployment of the reference LVLM in three processes
validation     the measured profile and the comparison of the simulator with the real deployment
"""
