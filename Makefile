.PHONY: setup search test
setup:
	bash scripts/setup.sh
search:
	bash scripts/search.sh
test:
	bash scripts/test.sh
