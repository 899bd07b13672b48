"""the studio: breed starting latents (issue 17)"""
