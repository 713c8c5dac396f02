"""What a learner clicks or watches in the notebooks: previews while training, the q(x_0, t)
slider (lab 02) and the class / prompt explorers (labs 04-05)."""
