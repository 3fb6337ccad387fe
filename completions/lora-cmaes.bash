# bash completion for lora-cmaes(1)
_lora_cmaes()
{
	local cur prev i
	cur=${COMP_WORDS[COMP_CWORD]}
	prev=${COMP_WORDS[COMP_CWORD-1]}
	# after "--" the words belong to COMMAND: complete commands, then files
	for ((i = 1; i < COMP_CWORD; i++)); do
		if [[ ${COMP_WORDS[i]} == -- ]]; then
			if ((i == COMP_CWORD - 1)); then
				COMPREPLY=($(compgen -c -- "$cur"))
			else
				COMPREPLY=($(compgen -f -- "$cur"))
			fi
			return
		fi
	done
	case $prev in
	-m|--method)
		COMPREPLY=($(compgen -W "cobyla cmaes bobyqa neldermead" -- "$cur"))
		return ;;
	--trace|--resume)
		COMPREPLY=($(compgen -f -- "$cur"))
		return ;;
	-b|--budget|--sigma0|--popsize|--restarts|--lower|--upper|--l1|--seed|--eval-timeout)
		return ;;
	esac
	COMPREPLY=($(compgen -W "--method --budget --sigma0 --popsize --restarts --lower --upper --l1 --seed --trace --resume --eval-timeout --quiet --verbose --help --version --" -- "$cur"))
}
complete -F _lora_cmaes lora-cmaes
