"""Jobs on a real small model (SmolLM2-135M-Instruct served by llama.cpp) through the real stack."""
