"""Generation engines for rejection sampling and the rounds' evaluation [paper 4.2.2] (see ``engine``)."""
